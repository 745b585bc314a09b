/* outbox.c -- the transactional outbox and its relay. See outbox.h.
 *
 * A relay pass selects up to `batch` pending rows (neither published nor
 * set aside) in seq order, after the last row sent, and sends one XADD per
 * row down the service's command connection (hiredis pipelines them). Passes
 * are pipelined too: the rows of each commit go out right after it while
 * earlier passes still wait for their replies -- on one connection, so Redis
 * takes them in seq order -- with at most `batch` rows outstanding. When a
 * pass's last reply is in, the pass is settled in one transaction (in the
 * loop iteration's group commit): the rows Redis refused for a reason no
 * retry fixes (WRONGTYPE, NOPERM, ERR) are set aside with that reason
 * (refused_at, refused_reason) -- counted and logged once -- so the rows
 * after them keep flowing, and exactly the rows it accepted are recorded
 * published.
 *
 * Published is a watermark, not a write per row. outbox_passes holds one row
 * per settled pass: last_seq, the watermark W it moved to, and the entry ids
 * Redis gave its rows (for outbox_entry_id). Every row at or below W that is
 * not set aside is published. A pass moves W only when each of its rows is
 * settled and nothing pending lies between W and it (its `from`, the bound it
 * selected above, is at or below W); otherwise its accepted rows are marked
 * one by one (published_at, entry_id), as every row was before. That happens
 * after a row refused for now (OOM, BUSY, READONLY, LOADING, ...) or whose
 * reply was lost: it stays pending, once every pass sent is settled the relay
 * rewinds, and the next pass, after a backoff, starts at it. Rows pipelined
 * after it that Redis accepted are marked, never sent again; so such a
 * transient refusal can let a later row reach Redis before it (a crash, or a
 * lost reply, can anyway). The pass that sends it again moves W past them.
 * A pending row is therefore one above W, neither marked nor set aside (the
 * view outbox_backlog); the relay selects them by seq from W, and needs no
 * index of its own.
 *
 * A settle that fails (a full disk, an I/O error) keeps the outcomes in
 * memory (ob->unmarked): no pass runs -- nothing is sent again -- while the
 * mark is retried with backoff. A pass moves W on what is durable, or on
 * what the same store group (store_group_gen) planned: a group that fails --
 * its COMMIT, or SQLite rolling it back on its own -- takes its planned W
 * with it, and no later pass builds on it. Passes answered after such a
 * failure mark their rows one by one, and make the relay rewind, so that
 * once everything is settled it starts from W again and moves it.
 *
 * A set-aside row waits for an operator: scripts/outbox requeue clears its
 * refused_at from another connection, and the trigger outbox_requeue moves
 * the row to the end (seq MAX + 1), above W, where the relay finds it
 * pending -- it would count as published where it was. The relay notices
 * the other connection's commit (PRAGMA data_version) at its next sweep.
 *
 * A pass is started by the commit hook (after a group COMMIT, or through a
 * uv_check, so every commit of one loop iteration shares one pass), by a
 * settled pass, by Redis coming up, and by a slow recovery sweep -- never
 * inside a transaction, which could show it rows not yet committed. seq is
 * a rowid without AUTOINCREMENT: SQLite gives a new row MAX(seq) + 1 and
 * pruning never deletes the newest row, so the rows a commit appended are
 * the seqs above the previous MAX(seq). */
#include <ripple/outbox.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include <hiredis/hiredis.h>
#include <jansson.h>
#include <sqlite3.h>
#include <uv.h>

#include <ripple/clock.h>
#include <ripple/json_out.h>
#include <ripple/log.h>
#include <ripple/metrics.h>
#include <ripple/redis.h>
#include <ripple/service.h>
#include <ripple/store.h>
#include <ripple/streams.h>
#include <ripple/trace.h>

#define SWEEP_MS 1000 /* recovery: a pass even when nothing woke us */
#define PRUNE_EVERY_MS 60000
#define PRUNE_BATCH 500
#define BACKOFF_MIN_MS 50
#define BACKOFF_MAX_MS 5000
#define XADD_ARGS 24
#define OUTBOX_DATA_STACK 4096 /* an event's data is dumped on the stack up to this size */

static const char schema[] = "CREATE TABLE IF NOT EXISTS outbox ("
                             " seq INTEGER PRIMARY KEY,"
                             " stream TEXT NOT NULL,"
                             " event_id TEXT NOT NULL UNIQUE,"
                             " type TEXT NOT NULL,"
                             " data TEXT NOT NULL,"
                             " trace TEXT,"
                             " created_at INTEGER NOT NULL," /* us since the epoch */
                             " published_at INTEGER,"        /* us, NULL until Redis accepted it */
                             " entry_id TEXT,"               /* the stream entry id Redis gave it */
                             " refused_at INTEGER,"  /* us: set aside, Redis refused it for good */
                             " refused_reason TEXT," /* Redis's error reply */
                             " traceparent TEXT);";  /* W3C trace context, or NULL */

/* Tables from before set-aside rows get their columns; then the indexes. */
static const char schema_upgrade[] = "ALTER TABLE outbox ADD COLUMN refused_at INTEGER;"
                                     "ALTER TABLE outbox ADD COLUMN refused_reason TEXT;";
static const char schema_upgrade_trace[] = "ALTER TABLE outbox ADD COLUMN traceparent TEXT;";
/* The watermark's table (see the top of the file). A table from before it
 * starts at the row before its oldest pending one, or at its newest row. */
static const char schema_passes[] =
    "BEGIN;"
    "CREATE TABLE outbox_passes ("
    " last_seq INTEGER PRIMARY KEY,"  /* the watermark this pass moved to */
    " first_seq INTEGER NOT NULL,"    /* the first seq it covered */
    " published_at INTEGER NOT NULL," /* us */
    " entries TEXT NOT NULL);"        /* a line "seq entry_id" per row Redis accepted */
    "INSERT INTO outbox_passes (last_seq, first_seq, published_at, entries)"
    " SELECT w, w + 1, CAST((julianday('now') - 2440587.5) * 86400000000 AS INTEGER), ''"
    " FROM (SELECT COALESCE((SELECT MIN(seq) FROM outbox"
    "                        WHERE published_at IS NULL AND refused_at IS NULL) - 1,"
    "                       (SELECT MAX(seq) FROM outbox), 0) AS w)"
    " WHERE w > 0;"
    "COMMIT;";
static const char schema_indexes[] =
    "DROP INDEX IF EXISTS outbox_unpublished;"
    "DROP INDEX IF EXISTS outbox_pending;"
    "CREATE INDEX IF NOT EXISTS outbox_set_aside ON outbox(seq) WHERE refused_at IS NOT NULL;"
    /* a re-queued row goes to the end, above the watermark */
    "CREATE TRIGGER IF NOT EXISTS outbox_requeue AFTER UPDATE OF refused_at ON outbox"
    " WHEN OLD.refused_at IS NOT NULL AND NEW.refused_at IS NULL BEGIN"
    " UPDATE outbox SET seq = (SELECT MAX(seq) FROM outbox) + 1 WHERE seq = NEW.seq; END;"
    /* the rows not published yet, for operators and tests */
    "CREATE VIEW IF NOT EXISTS outbox_backlog AS SELECT * FROM outbox"
    " WHERE seq > (SELECT COALESCE(MAX(last_seq), 0) FROM outbox_passes)"
    " AND published_at IS NULL AND refused_at IS NULL;";

/* Pending, above the watermark (bound by the statement). */
#define PENDING "published_at IS NULL AND refused_at IS NULL"
#define PRUNE_PASSES 64 /* outbox_passes rows per prune round: their rows go with them */
#define PRUNE_ROUNDS 8  /* rounds per prune, while they find rows */

static const double latency_bounds[] = {0.00005, 0.0001,  0.00015, 0.0002, 0.0003, 0.0004,
                                        0.0005,  0.00075, 0.001,   0.0015, 0.002,  0.003,
                                        0.005,   0.01,    0.05,    0.25};

struct relay_batch;

struct outbox {
    struct service *svc;
    struct store *store;
    struct redis *redis; /* borrowed from svc */
    char source[32];
    struct outbox_config cfg;
    char maxlen[24];

    struct sqlite3_stmt *insert_st, *select_st, *mark_st, *refuse_st, *max_seq_st, *oldest_st;
    struct sqlite3_stmt *entry_st, *count_st, *aside_st, *version_st;
    struct sqlite3_stmt *pass_st, *watermark_st, *pass_entries_st, *prune_upto_st;
    struct sqlite3_stmt *prune_rows_st, *prune_passes_st;
    uv_check_t wake;    /* runs the relay at the end of the loop iteration */
    uv_timer_t sweep;   /* recovery pass, re-queues, pruning */
    uv_timer_t backoff; /* after a failed pass or settle */
    uv_timer_t flush;   /* bounds outbox_close's drain */
    unsigned backoff_ms;
    uint64_t last_prune; /* uv_now ms */

    int64_t max_seq;      /* highest committed seq */
    int64_t watermark;    /* durable: every row at or below is published or set aside */
    int64_t planned;      /* the watermark with the marks of group planned_gen */
    uint64_t planned_gen; /* the store group planned was written in (store_group_gen) */
    uint64_t backlog;     /* rows neither published nor set aside */
    uint64_t set_aside;   /* rows refused for good, waiting for an operator */
    int64_t data_version; /* PRAGMA data_version: moves when another connection commits */
    /* The relay's passes: sent (in flight) until their last reply, then
     * unmarked until their settle is durable. */
    int64_t sent_seq;             /* the last row sent since the last rewind */
    int rewind;                   /* a row sent stays pending: start over once all is settled */
    unsigned inflight;            /* passes waiting for replies */
    uint64_t outstanding;         /* rows of the passes in flight or unmarked */
    struct relay_batch *unmarked; /* answered passes, oldest first, until their mark is durable */
    unsigned marking;             /* of them, the ones whose mark waits for the group COMMIT */
    int mark_failing;             /* a settle failed (one of unmarked): logged once per streak */
    int close_settled;            /* closing: the last settle was attempted */
    int close_waits;              /* closing: the drain waits for the open group's end */
    char mark_err[128];           /* why the last mark failed, for that log line */
    int closing;
    unsigned pending_closes;
    outbox_closed_cb closed_cb;
    void *closed_data;

    struct metrics_histogram *latency;
    struct metrics_counter *published, *failed, *refused, *mark_failures;
};

/* What Redis said about one row of a pass. */
enum row_state {
    ROW_SENT,     /* no reply yet */
    ROW_ACCEPTED, /* to be marked published */
    ROW_REFUSED,  /* for good: to be set aside */
    ROW_RETRY,    /* refused for now, or the reply was lost: stays pending */
};

struct relay_row {
    int64_t seq;
    int64_t created_at; /* us */
    int64_t replied_at; /* us: Redis's answer arrived */
    enum row_state state;
    char entry_id[32];               /* ACCEPTED: the id Redis gave it */
    char event_id[IDS_UUID_LEN + 1]; /* for the log */
    char stream[64];                 /* for the log (truncated) */
    char reason[128];                /* REFUSED: Redis's error (truncated) */
};

/* One relay pass: the rows sent and their replies. */
struct relay_batch {
    struct outbox *ob;
    struct relay_batch *next; /* in ob->unmarked */
    int64_t from;             /* it selected rows above this seq */
    int64_t moved_to;         /* the watermark its last mark wrote, 0 if it marked rows */
    size_t n, answered;
    int retry;   /* a row stays pending: rewind, and back off before the next pass */
    int marking; /* its mark waits for the store's group COMMIT */
    struct relay_row rows[];
};

static void relay_pass(struct outbox *ob);
static void maybe_closed(struct outbox *ob);

/* ---------------------------------------------------------------------------
 * Appending
 * ------------------------------------------------------------------------- */

/* A module emits only what it declared, as it declared it. */
static int check_declared(const struct outbox *ob, const char *stream, const char *type,
                          const json_t *data)
{
    char err[STREAMS_MAX_ERR];
    const struct stream_type *t;

    if (ob->cfg.emits == NULL)
        return 0;
    t = streams_find(ob->cfg.emits, stream, type);
    if (t == NULL) {
        log_error("outbox: %s on %s is not among the types this module declares it emits", type,
                  stream);
        return -EINVAL;
    }
    if (streams_validate(t, data, err, sizeof(err)) < 0) {
        log_error("outbox: %s breaks its declared spec: %s", type, err);
        return -EINVAL;
    }
    return 0;
}

int outbox_emit(struct outbox *ob, const struct stream_type *t, json_t *data, const char *trace,
                char event_id[IDS_UUID_LEN + 1])
{
    int rc;

    if (data == NULL)
        return -ENOMEM;
    rc = outbox_append(ob, t->stream, t->type, data, trace, event_id);
    json_decref(data);
    return rc;
}

int outbox_append(struct outbox *ob, const char *stream, const char *type,
                  const struct json_t *data, const char *trace, char event_id[IDS_UUID_LEN + 1])
{
    char id[IDS_UUID_LEN + 1], buf[OUTBOX_DATA_STACK];
    char *text;
    size_t len = 0;
    int rc;

    if (!store_in_txn(ob->store))
        return -EINVAL;
    if ((rc = check_declared(ob, stream, type, data)) < 0)
        return rc;
    if ((text = json_out_dump(data, buf, sizeof(buf), &len)) == NULL)
        return -ENOMEM;
    ids_uuid7(id);
    sqlite3_bind_text(ob->insert_st, 1, stream, -1, SQLITE_STATIC);
    sqlite3_bind_text(ob->insert_st, 2, id, -1, SQLITE_STATIC);
    sqlite3_bind_text(ob->insert_st, 3, type, -1, SQLITE_STATIC);
    sqlite3_bind_text(ob->insert_st, 4, text, (int)len, SQLITE_STATIC);
    if (trace != NULL)
        sqlite3_bind_text(ob->insert_st, 5, trace, -1, SQLITE_STATIC);
    else
        sqlite3_bind_null(ob->insert_st, 5);
    sqlite3_bind_int64(ob->insert_st, 6, clock_now_us());
    /* the trace context of the work in hand (ripple/trace.h), NULL when none */
    sqlite3_bind_text(ob->insert_st, 7, trace_current(), -1, SQLITE_TRANSIENT);
    rc = sqlite3_step(ob->insert_st) == SQLITE_DONE ? 0 : -EIO;
    if (rc < 0)
        log_error("outbox: append %s to %s failed: %s", type, stream, store_errmsg(ob->store));
    store_reset(ob->insert_st);
    if (text != buf)
        free(text);
    if (rc == 0 && event_id != NULL)
        memcpy(event_id, id, sizeof(id));
    return rc;
}

/* text (a column's, NULL when SQLite ran out of memory) into buf. */
static int copy_text(const unsigned char *text, char *buf, size_t len)
{
    if (text == NULL)
        return -ENOMEM;
    return snprintf(buf, len, "%s", (const char *)text) >= (int)len ? -ENOSPC : 0;
}

/* The entry id of seq in a pass's entries ("seq entry_id" lines). */
static int find_entry(const char *entries, int64_t seq, char *buf, size_t len)
{
    const char *p = entries;

    while (*p != '\0') {
        char *end;
        long long s = strtoll(p, &end, 10);
        const char *nl = strchr(end, '\n');
        size_t n;

        if (end == p || *end != ' ' || nl == NULL)
            return -EINVAL;
        if (s == seq) {
            n = (size_t)(nl - end - 1);
            if (n + 1 > len)
                return -ENOSPC;
            memcpy(buf, end + 1, n);
            buf[n] = '\0';
            return 0;
        }
        p = nl + 1;
    }
    return -ENOENT;
}

int outbox_entry_id(struct outbox *ob, const char *event_id, char *buf, size_t len)
{
    int64_t seq = 0;
    int rc = -ENOENT;

    sqlite3_bind_text(ob->entry_st, 1, event_id, -1, SQLITE_STATIC);
    if (sqlite3_step(ob->entry_st) == SQLITE_ROW) {
        seq = sqlite3_column_int64(ob->entry_st, 0);
        if (sqlite3_column_type(ob->entry_st, 1) != SQLITE_NULL) /* marked on its own */
            rc = copy_text(sqlite3_column_text(ob->entry_st, 1), buf, len);
    }
    store_reset(ob->entry_st);
    if (rc != -ENOENT || seq == 0)
        return rc;
    /* published by a pass: the first pass row at or above it */
    sqlite3_bind_int64(ob->pass_entries_st, 1, seq);
    if (sqlite3_step(ob->pass_entries_st) == SQLITE_ROW &&
        sqlite3_column_int64(ob->pass_entries_st, 0) <= seq) {
        const unsigned char *entries = sqlite3_column_text(ob->pass_entries_st, 1);

        rc = entries != NULL ? find_entry((const char *)entries, seq, buf, len) : -ENOMEM;
    }
    store_reset(ob->pass_entries_st);
    return rc;
}

uint64_t outbox_backlog(const struct outbox *ob)
{
    return ob->backlog;
}

uint64_t outbox_set_aside(const struct outbox *ob)
{
    return ob->set_aside;
}

int outbox_overloaded(const struct outbox *ob)
{
    return ob->cfg.max_backlog > 0 && ob->backlog > ob->cfg.max_backlog;
}

static int64_t query_int(struct sqlite3_stmt *st, int64_t dflt)
{
    int64_t v = dflt;

    if (sqlite3_step(st) == SQLITE_ROW && sqlite3_column_type(st, 0) != SQLITE_NULL)
        v = sqlite3_column_int64(st, 0);
    store_reset(st);
    return v;
}

/* The module this outbox's lines belong to (log.h). */
static void scope(const struct outbox *ob)
{
    if (ob->cfg.log_scope != NULL)
        log_scope(ob->cfg.log_scope);
}

static void on_wake(uv_check_t *h)
{
    struct outbox *ob = h->data;

    scope(ob);
    uv_check_stop(h);
    relay_pass(ob);
}

/* After every commit: count the rows it appended and wake the relay. */
static void on_commit(struct store *st, void *data)
{
    struct outbox *ob = data;
    int64_t max;

    scope(ob);
    max = query_int(ob->max_seq_st, 0);
    if (max > ob->max_seq) {
        ob->backlog += (uint64_t)(max - ob->max_seq);
        ob->max_seq = max;
    }
    if (ob->backlog == 0)
        return;
    if (store_grouped(st)) /* once per iteration already, from its end */
        relay_pass(ob);
    else if (!uv_is_active((uv_handle_t *)&ob->wake))
        uv_check_start(&ob->wake, on_wake);
}

/* Reads the counts from the table: at start, and after another connection
 * wrote to it (an operator re-queued set-aside rows). */
static void recount(struct outbox *ob)
{
    ob->max_seq = query_int(ob->max_seq_st, 0);
    sqlite3_bind_int64(ob->count_st, 1, ob->watermark);
    ob->backlog = (uint64_t)query_int(ob->count_st, 0);
    ob->set_aside = (uint64_t)query_int(ob->aside_st, 0);
}

/* ---------------------------------------------------------------------------
 * Settling a pass: mark what Redis accepted, set aside what it refused
 * ------------------------------------------------------------------------- */

static int mark_row(struct outbox *ob, const struct relay_row *row, int64_t now)
{
    struct sqlite3_stmt *st = row->state == ROW_ACCEPTED ? ob->mark_st : ob->refuse_st;
    int rc;

    sqlite3_bind_int64(st, 1, now);
    if (row->state == ROW_ACCEPTED)
        sqlite3_bind_text(st, 2, row->entry_id, -1, SQLITE_STATIC);
    else
        sqlite3_bind_text(st, 2, row->reason, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, row->seq);
    rc = sqlite3_step(st) == SQLITE_DONE ? 0 : -EIO;
    if (rc < 0) /* before the reset and the rollback clear the message */
        snprintf(ob->mark_err, sizeof(ob->mark_err), "%s", store_errmsg(ob->store));
    store_reset(st);
    return rc;
}

/* Records b's pass in outbox_passes: the watermark moves to its last row. */
static int insert_pass(struct outbox *ob, const struct relay_batch *b, int64_t now)
{
    size_t cap = b->n * (sizeof(b->rows[0].entry_id) + 24) + 1, used = 0;
    char *entries = malloc(cap);
    int rc;

    if (entries == NULL) {
        snprintf(ob->mark_err, sizeof(ob->mark_err), "out of memory");
        return -ENOMEM;
    }
    entries[0] = '\0';
    for (size_t i = 0; i < b->n; i++) {
        const struct relay_row *row = &b->rows[i];

        if (row->state == ROW_ACCEPTED && row->entry_id[0] != '\0')
            used += (size_t)snprintf(entries + used, cap - used, "%lld %s\n", (long long)row->seq,
                                     row->entry_id);
    }
    sqlite3_bind_int64(ob->pass_st, 1, b->rows[b->n - 1].seq);
    sqlite3_bind_int64(ob->pass_st, 2, b->from + 1);
    sqlite3_bind_int64(ob->pass_st, 3, now);
    sqlite3_bind_text(ob->pass_st, 4, entries, (int)used, SQLITE_STATIC);
    rc = sqlite3_step(ob->pass_st) == SQLITE_DONE ? 0 : -EIO;
    if (rc < 0)
        snprintf(ob->mark_err, sizeof(ob->mark_err), "%s", store_errmsg(ob->store));
    store_reset(ob->pass_st);
    free(entries);
    return rc;
}

/* Writes the outcome of b in one transaction (none when there is nothing to
 * write): the rows set aside, and either the pass (the watermark moves past
 * it) or, when something not yet settled lies before or in it, each accepted
 * row. On success b->moved_to says which, and ob->planned follows it.
 *
 * What lies below b is settled up to the watermark this group already
 * plans, or the durable one when the planned one was written in another
 * group: committed since, and then durable, or rolled back -- by a failed
 * COMMIT, or by SQLite on its own, in which case a later pass must not move
 * the watermark past rows whose record is gone. */
static int mark_rows(struct outbox *ob, struct relay_batch *b)
{
    int64_t now = clock_now_us(), last = b->rows[b->n - 1].seq, base;
    size_t done = 0;
    int covered, moves, rc;

    b->moved_to = 0;
    for (size_t i = 0; i < b->n; i++)
        done += b->rows[i].state == ROW_ACCEPTED || b->rows[i].state == ROW_REFUSED;
    if (done == 0)
        return 0;
    snprintf(ob->mark_err, sizeof(ob->mark_err), "BEGIN or COMMIT failed");
    if ((rc = store_begin(ob->store)) < 0)
        return rc;
    base = store_group_gen(ob->store) == ob->planned_gen ? ob->planned : ob->watermark;
    /* covered: a retried settle whose pass row is in already */
    covered = done == b->n && last <= base;
    moves = done == b->n && !covered && b->from <= base;
    for (size_t i = 0; i < b->n && rc == 0; i++) {
        if (b->rows[i].state == ROW_REFUSED ||
            (b->rows[i].state == ROW_ACCEPTED && !moves && !covered))
            rc = mark_row(ob, &b->rows[i], now);
    }
    if (rc == 0 && moves)
        rc = insert_pass(ob, b, now);
    if (rc < 0) {
        store_rollback(ob->store);
        return rc;
    }
    if ((rc = store_commit(ob->store)) < 0)
        return rc;
    if (moves) {
        b->moved_to = last;
        ob->planned = last;
        ob->planned_gen = store_group_gen(ob->store);
    } else if (done == b->n && !covered) {
        /* Every row answered, but an earlier pass's record failed (and is
         * retried): the passes after it would mark their rows one by one
         * for as long as passes overlap. Once all is settled the relay
         * starts again from the watermark, and moves it. */
        ob->rewind = 1;
    }
    return 0;
}

/* The pass is settled: counts, metrics and one line per row set aside. */
static void account(struct outbox *ob, const struct relay_batch *b)
{
    uint64_t published = 0, refused = 0;

    for (size_t i = 0; i < b->n; i++) {
        const struct relay_row *row = &b->rows[i];

        if (row->state == ROW_ACCEPTED) {
            metrics_histogram_observe(ob->latency,
                                      (double)(row->replied_at - row->created_at) / 1e6);
            published++;
        } else if (row->state == ROW_REFUSED) {
            log_error("outbox: row %lld (event %s) set aside: Redis refused it for %s: %s; "
                      "`scripts/outbox requeue` sends it again once that is fixed",
                      (long long)row->seq, row->event_id, row->stream, row->reason);
            refused++;
        }
    }
    ob->backlog -= published + refused > ob->backlog ? ob->backlog : published + refused;
    ob->set_aside += refused;
    metrics_counter_add(ob->published, published);
    metrics_counter_add(ob->refused, refused);
}

static void on_marked(void *data, int ok);

static void unlink_unmarked(struct outbox *ob, struct relay_batch *b)
{
    struct relay_batch **p = &ob->unmarked;

    while (*p != b)
        p = &(*p)->next;
    *p = b->next;
}

/* 1 when an unmarked pass's last settle failed (it is retried). */
static int any_failed(const struct outbox *ob)
{
    for (const struct relay_batch *b = ob->unmarked; b != NULL; b = b->next) {
        if (!b->marking)
            return 1;
    }
    return 0;
}

/* The mark of b is durable (rc 0) or failed: on success accounts for b
 * and frees it; on failure keeps it in ob->unmarked (its rows are not sent
 * again meanwhile). Returns rc. */
static int settled(struct outbox *ob, struct relay_batch *b, int rc)
{
    if (rc < 0) {
        metrics_counter_add(ob->mark_failures, 1);
        if (!ob->mark_failing)
            log_error("outbox: cannot record what Redis answered (%s): the rows it accepted are "
                      "not sent again; retrying the mark with backoff",
                      ob->mark_err);
        ob->mark_failing = 1;
        return rc;
    }
    unlink_unmarked(ob, b);
    ob->outstanding -= b->n;
    if (b->moved_to > ob->watermark)
        ob->watermark = b->moved_to;
    if (ob->planned < ob->watermark)
        ob->planned = ob->watermark;
    account(ob, b);
    free(b);
    if (ob->mark_failing && !any_failed(ob)) {
        log_info("outbox: recorded what Redis accepted after failed attempts");
        ob->mark_failing = 0;
        ob->backoff_ms = 0; /* the streak is over: a rewind it left waits the least */
    }
    return 0;
}

/* Settles b: 0 done, 1 waiting for the store's group COMMIT (on_marked
 * goes on), or the error (settled's). */
static int settle(struct outbox *ob, struct relay_batch *b)
{
    int rc;

    if (b->marking)
        return 1;
    rc = mark_rows(ob, b);
    if (rc == 0) {
        rc = store_when_durable(ob->store, on_marked, b);
        if (rc == 0) {
            b->marking = 1;
            ob->marking++;
            return 1;
        }
        if (rc == 1)
            rc = 0; /* no group: committed already */
        else
            snprintf(ob->mark_err, sizeof(ob->mark_err), "cannot wait for the commit");
    }
    return settled(ob, b, rc);
}

/* Settles again every pass whose settle failed: 0 when none is left
 * failed, 1 when one waits for a COMMIT, or the first error. */
static int settle_failed(struct outbox *ob)
{
    struct relay_batch *b = ob->unmarked, *next;
    int waits = 0;

    for (; b != NULL; b = next) {
        int rc;

        next = b->next; /* settle may free b */
        if (b->marking)
            continue;
        rc = settle(ob, b);
        if (rc < 0)
            return rc;
        waits |= rc;
    }
    return waits;
}

/* ---------------------------------------------------------------------------
 * The relay
 * ------------------------------------------------------------------------- */

static void on_backoff(uv_timer_t *t);

static void back_off(struct outbox *ob)
{
    metrics_counter_add(ob->failed, 1);
    ob->backoff_ms = ob->backoff_ms ? ob->backoff_ms * 2 : BACKOFF_MIN_MS;
    if (ob->backoff_ms > BACKOFF_MAX_MS)
        ob->backoff_ms = BACKOFF_MAX_MS;
    if (!ob->closing)
        uv_timer_start(&ob->backoff, on_backoff, ob->backoff_ms, 0);
}

static void on_backoff(uv_timer_t *t)
{
    struct outbox *ob = t->data;
    int rc;

    scope(ob);
    rc = settle_failed(ob);
    if (rc == 1)
        return; /* on_marked goes on */
    if (rc < 0) {
        back_off(ob);
        return;
    }
    ob->backoff_ms = 0;
    relay_pass(ob);
}

/* A pass was settled (rc from settle): back off or go on. A pass that left
 * a row pending backs off once every pass sent is settled, and the relay
 * rewinds then (relay_pass). */
static void after_settle(struct outbox *ob, int rc)
{
    if (ob->closing) {
        if (rc < 0 || ob->rewind)
            back_off(ob); /* counts it; while closing, no timer, and no more drain */
        maybe_closed(ob);
        return;
    }
    if (uv_is_active((uv_handle_t *)&ob->backoff))
        return; /* on_backoff goes on */
    if (rc < 0 || ob->mark_failing) {
        back_off(ob);
    } else if (ob->rewind) {
        if (ob->inflight == 0 && ob->unmarked == NULL)
            back_off(ob);
    } else {
        ob->backoff_ms = 0;
        relay_pass(ob);
    }
}

static void on_marked(void *data, int ok)
{
    struct relay_batch *b = data;
    struct outbox *ob = b->ob;

    scope(ob);
    b->marking = 0;
    ob->marking--;
    if (!ok) /* its planned watermark went with the group (store_group_gen) */
        snprintf(ob->mark_err, sizeof(ob->mark_err), "the group commit failed");
    after_settle(ob, settled(ob, b, ok ? 0 : -EIO));
}

/* b's last reply is in: it joins the unmarked passes and is settled. */
static void batch_done(struct relay_batch *b)
{
    struct outbox *ob = b->ob;
    struct relay_batch **tail = &ob->unmarked;
    int rc;

    ob->inflight--;
    if (b->retry)
        ob->rewind = 1;
    while (*tail != NULL)
        tail = &(*tail)->next;
    *tail = b;
    rc = settle(ob, b);
    if (rc != 1)
        after_settle(ob, rc);
}

static void note_refusal(struct relay_batch *b, struct relay_row *row, const char *err)
{
    if (redis_error_class(err) == REDIS_ERROR_PERMANENT) {
        row->state = ROW_REFUSED;
        snprintf(row->reason, sizeof(row->reason), "%s", err);
        return;
    }
    if (!b->retry)
        log_warn("outbox: XADD of row %lld to %s refused for now: %s (retrying after a backoff)",
                 (long long)row->seq, row->stream, err);
    row->state = ROW_RETRY;
    b->retry = 1;
}

static void on_xadd(struct redis *r, struct redisReply *reply, void *data)
{
    struct relay_batch *b = data;
    struct relay_row *row = &b->rows[b->answered++];

    (void)r;
    if (reply == NULL) {
        row->state = ROW_RETRY; /* lost with the connection: accepted or not, it goes again */
        b->retry = 1;
    } else if (reply->type == REDIS_REPLY_ERROR) {
        note_refusal(b, row, reply->str);
    } else {
        row->state = ROW_ACCEPTED;
        row->replied_at = clock_now_us();
        if (reply->type == REDIS_REPLY_STRING)
            snprintf(row->entry_id, sizeof(row->entry_id), "%s", reply->str);
    }
    if (b->answered == b->n)
        batch_done(b);
}

/* Sends one row; returns 0 or -ENOTCONN/-ENOMEM. */
static int send_row(struct outbox *ob, struct relay_batch *b, struct sqlite3_stmt *st)
{
    const char *argv[XADD_ARGS];
    size_t len[XADD_ARGS];
    char ts[24];
    int n = 0;

#define ARG(s, l) (argv[n] = (s), len[n] = (l), n++)
#define COL(i) ARG((const char *)sqlite3_column_text(st, i), (size_t)sqlite3_column_bytes(st, i))
    snprintf(ts, sizeof(ts), "%lld", (long long)(sqlite3_column_int64(st, 6) / 1000));
    ARG("XADD", 4);
    COL(1);
    if (ob->cfg.maxlen > 0) {
        ARG("MAXLEN", 6);
        ARG("~", 1);
        ARG(ob->maxlen, strlen(ob->maxlen));
    }
    ARG("*", 1);
    ARG("type", 4), COL(3);
    ARG("data", 4), COL(4);
    ARG("id", 2), COL(2);
    if (sqlite3_column_type(st, 5) != SQLITE_NULL)
        ARG("trace", 5), COL(5);
    if (sqlite3_column_type(st, 7) != SQLITE_NULL)
        ARG("traceparent", 11), COL(7);
    ARG("source", 6), ARG(ob->source, strlen(ob->source));
    ARG("ts", 2), ARG(ts, strlen(ts));
    ARG("v", 1), ARG("1", 1);
#undef COL
#undef ARG
    return redis_command(ob->redis, on_xadd, b, n, argv, len);
}

/* Fills the next row of b from the current result row of st. */
static void keep_row(struct relay_batch *b, struct sqlite3_stmt *st)
{
    struct relay_row *row = &b->rows[b->n++];

    memset(row, 0, sizeof(*row));
    row->seq = sqlite3_column_int64(st, 0);
    row->created_at = sqlite3_column_int64(st, 6);
    row->state = ROW_SENT;
    snprintf(row->stream, sizeof(row->stream), "%s", (const char *)sqlite3_column_text(st, 1));
    snprintf(row->event_id, sizeof(row->event_id), "%s", (const char *)sqlite3_column_text(st, 2));
}

/* Rows a pass may take now: 0 while it must not run. */
static size_t pass_room(struct outbox *ob)
{
    uint64_t waiting;

    if (ob->mark_failing || !redis_is_up(ob->redis) || store_in_txn(ob->store) ||
        store_group_pending(ob->store))
        return 0; /* a transaction could show rows not committed yet */
    if (ob->rewind) {
        if (ob->inflight > 0 || ob->unmarked != NULL || uv_is_active((uv_handle_t *)&ob->backoff))
            return 0; /* the backoff's pass rewinds */
        ob->rewind = 0;
        ob->sent_seq = 0; /* from the oldest pending row again */
    }
    waiting = ob->backlog > ob->outstanding ? ob->backlog - ob->outstanding : 0;
    if (ob->outstanding >= ob->cfg.batch || waiting == 0)
        return 0;
    return (size_t)(waiting < ob->cfg.batch - ob->outstanding ? waiting
                                                              : ob->cfg.batch - ob->outstanding);
}

static void relay_pass(struct outbox *ob)
{
    struct relay_batch *b;
    size_t cap = pass_room(ob);
    int rc = 0;

    if (cap == 0)
        return;
    b = calloc(1, sizeof(*b) + cap * sizeof(b->rows[0]));
    if (b == NULL)
        return;
    b->ob = ob;
    b->from = ob->sent_seq > ob->watermark ? ob->sent_seq : ob->watermark;
    sqlite3_bind_int64(ob->select_st, 1, b->from);
    sqlite3_bind_int64(ob->select_st, 2, (sqlite3_int64)cap);
    while (rc == 0 && sqlite3_step(ob->select_st) == SQLITE_ROW) {
        rc = send_row(ob, b, ob->select_st);
        if (rc == 0)
            keep_row(b, ob->select_st);
    }
    store_reset(ob->select_st);
    if (b->n == 0) {
        /* Nothing sent (or Redis refused the first send): the sweep retries. */
        free(b);
        return;
    }
    ob->inflight++;
    ob->outstanding += b->n;
    ob->sent_seq = b->rows[b->n - 1].seq;
    if (rc < 0)
        b->retry = 1; /* the rows sent still get their replies */
    /* b now belongs to the XADD callbacks: the last reply frees it */
} /* NOLINT(clang-analyzer-unix.Malloc) */

/* ---------------------------------------------------------------------------
 * Upkeep: recovery sweep, re-queues, pruning, metrics
 * ------------------------------------------------------------------------- */

/* Runs one prune statement; returns the rows it deleted, or -1. */
static int prune_step(struct outbox *ob, struct sqlite3_stmt *st)
{
    int changes = -1;

    if (sqlite3_step(st) == SQLITE_DONE)
        changes = sqlite3_changes(store_db(ob->store));
    else
        log_warn("outbox: pruning failed: %s", store_errmsg(ob->store));
    store_reset(st);
    return changes;
}

/* Published rows older than the retention, in batches, with their passes:
 * the oldest PRUNE_PASSES passes a round (only those, not a scan of every
 * pass: they were settled in order, so the old ones come first), never the
 * newest pass (it holds the watermark) nor the newest row (see the top of
 * the file). Rows marked one by one go once the watermark has passed them,
 * as it does once nothing before them is pending. Set-aside rows stay until
 * re-queued. */
static void prune(struct outbox *ob)
{
    int64_t cutoff = clock_now_us() - (int64_t)ob->cfg.retention_ms * 1000, upto;
    int rows = 0, n, passes;

    if (store_in_txn(ob->store) || store_group_pending(ob->store))
        return;
    /* passes of one row each at a low rate: several rounds, so that a
     * prune takes at least the PRUNE_BATCH rows a row-by-row prune did */
    for (int round = 0; round < PRUNE_ROUNDS && rows < PRUNE_BATCH * PRUNE_ROUNDS; round++) {
        sqlite3_bind_int64(ob->prune_upto_st, 1, cutoff);
        sqlite3_bind_int(ob->prune_upto_st, 2, PRUNE_PASSES);
        upto = query_int(ob->prune_upto_st, 0);
        if (upto <= 0 || store_begin(ob->store) < 0)
            break;
        sqlite3_bind_int64(ob->prune_rows_st, 1, upto);
        sqlite3_bind_int64(ob->prune_passes_st, 1, upto);
        if ((n = prune_step(ob, ob->prune_rows_st)) < 0 ||
            (passes = prune_step(ob, ob->prune_passes_st)) < 0) {
            store_rollback(ob->store);
            break;
        }
        if (store_commit(ob->store) < 0)
            break;
        rows += n;
        if (n == 0 && passes == 0)
            break; /* only the newest pass is older than the retention */
    }
    if (rows > 0)
        log_debug("outbox: pruned %d published rows", rows);
}

/* Every minute, or as often as the retention asks, down to every sweep. */
static uint64_t prune_every_ms(const struct outbox *ob)
{
    uint64_t r = ob->cfg.retention_ms;

    return r >= PRUNE_EVERY_MS ? PRUNE_EVERY_MS : r > SWEEP_MS ? r : SWEEP_MS;
}

/* Another connection committed (scripts/outbox requeue): count again, once
 * no pass is in flight or waiting for its mark (their rows are counted in
 * the backlog until settled). */
static void notice_other_writers(struct outbox *ob)
{
    int64_t v = query_int(ob->version_st, ob->data_version);

    if (v == ob->data_version || store_in_txn(ob->store) || store_group_pending(ob->store))
        return;
    if (ob->inflight > 0 || ob->unmarked != NULL) {
        /* Busy: no new pass until every pass sent is settled, then the
         * relay starts over and the next sweep counts again. */
        ob->rewind = 1;
        return;
    }
    ob->data_version = v;
    recount(ob);
    ob->sent_seq = 0; /* a re-queued row is older than the last sent */
    log_debug("outbox: another connection wrote: %llu rows pending, %llu set aside",
              (unsigned long long)ob->backlog, (unsigned long long)ob->set_aside);
}

static void on_sweep(uv_timer_t *t)
{
    struct outbox *ob = t->data;

    scope(ob);
    uint64_t now = uv_now(t->loop);

    notice_other_writers(ob);
    if (ob->inflight == 0 && ob->unmarked == NULL)
        ob->sent_seq = 0; /* recovery: every pending row, from the oldest */
    if (!uv_is_active((uv_handle_t *)&ob->backoff))
        relay_pass(ob);
    if (now - ob->last_prune >= prune_every_ms(ob)) {
        ob->last_prune = now;
        prune(ob);
    }
}

static void on_redis_state(struct redis *r, int up, void *data)
{
    struct outbox *ob = data;

    (void)r;
    if (up && !ob->closing && !ob->mark_failing) {
        ob->backoff_ms = 0;
        uv_timer_stop(&ob->backoff);
        relay_pass(ob);
    }
}

static double gauge_backlog(void *data)
{
    return (double)outbox_backlog(data);
}

static double gauge_set_aside(void *data)
{
    return (double)outbox_set_aside(data);
}

static double gauge_oldest(void *data)
{
    struct outbox *ob = data;
    int64_t created;

    if (ob->backlog == 0)
        return 0;
    sqlite3_bind_int64(ob->oldest_st, 1, ob->watermark);
    created = query_int(ob->oldest_st, 0);
    return created > 0 ? (double)(clock_now_us() - created) / 1e6 : 0;
}

static int register_counters(struct outbox *ob, struct metrics *m)
{
    ob->latency = metrics_histogram(m, "outbox_publish_latency_seconds",
                                    "Time from outbox append to Redis accepting the XADD.", "",
                                    latency_bounds, ARRAY_SIZE(latency_bounds));
    ob->published = metrics_counter(m, "outbox_published_total", "Outbox rows published.", "");
    ob->failed =
        metrics_counter(m, "outbox_publish_failures_total",
                        "Relay passes stopped by a refused or lost XADD, or a failed mark.", "");
    ob->refused =
        metrics_counter(m, "outbox_refused_total",
                        "Outbox rows Redis refused for a reason no retry fixes; set aside.", "");
    ob->mark_failures =
        metrics_counter(m, "outbox_mark_failures_total",
                        "Failed transactions recording which rows Redis accepted (retried; the "
                        "rows are not sent again meanwhile).",
                        "");
    if (ob->latency == NULL || ob->published == NULL || ob->failed == NULL || ob->refused == NULL ||
        ob->mark_failures == NULL)
        return -ENOMEM;
    return 0;
}

static int register_metrics(struct outbox *ob, struct metrics *m)
{
    if (register_counters(ob, m) < 0 ||
        metrics_gauge(m, "outbox_backlog", "Committed outbox rows not yet published.", "",
                      gauge_backlog, ob) < 0 ||
        metrics_gauge(m, "outbox_set_aside",
                      "Outbox rows Redis refused for good, waiting to be re-queued.", "",
                      gauge_set_aside, ob) < 0 ||
        metrics_gauge(m, "outbox_oldest_unpublished_age_seconds",
                      "Age of the oldest unpublished outbox row.", "", gauge_oldest, ob) < 0)
        return -ENOMEM;
    return 0;
}

/* ---------------------------------------------------------------------------
 * Life cycle
 * ------------------------------------------------------------------------- */

static int exec_sql(struct outbox *ob, const char *sql, const char *what)
{
    if (sqlite3_exec(store_db(ob->store), sql, NULL, NULL, NULL) != SQLITE_OK) {
        log_error("outbox: cannot %s: %s", what, store_errmsg(ob->store));
        return -EIO;
    }
    return 0;
}

/* The table, its set-aside columns on a table from an older build, and its
 * indexes. */
static int create_table(struct outbox *ob)
{
    struct sqlite3_stmt *has;
    int rc;

    if ((rc = exec_sql(ob, schema, "create its table")) < 0)
        return rc;
    rc = store_prepare(ob->store,
                       "SELECT COUNT(*) FROM pragma_table_info('outbox') WHERE name = 'refused_at'",
                       &has);
    if (rc < 0)
        return rc;
    if (query_int(has, 0) == 0 &&
        (rc = exec_sql(ob, schema_upgrade, "add the set-aside columns")) < 0)
        return rc;
    rc = store_prepare(
        ob->store, "SELECT COUNT(*) FROM pragma_table_info('outbox') WHERE name = 'traceparent'",
        &has);
    if (rc < 0)
        return rc;
    if (query_int(has, 0) == 0 &&
        (rc = exec_sql(ob, schema_upgrade_trace, "add the traceparent column")) < 0)
        return rc;
    rc = store_prepare(ob->store,
                       "SELECT COUNT(*) FROM sqlite_schema WHERE type = 'table' AND "
                       "name = 'outbox_passes'",
                       &has);
    if (rc < 0)
        return rc;
    if (query_int(has, 0) == 0 &&
        (rc = exec_sql(ob, schema_passes, "create its watermark table")) < 0) {
        sqlite3_exec(store_db(ob->store), "ROLLBACK", NULL, NULL, NULL);
        return rc;
    }
    return exec_sql(ob, schema_indexes, "create its indexes");
}

static int prepare_relay(struct outbox *ob)
{
    struct store *st = ob->store;
    int rc;

    if ((rc = store_prepare(st,
                            "SELECT seq, stream, event_id, type, data, trace, created_at, "
                            "traceparent FROM outbox WHERE seq > ? AND " PENDING
                            " ORDER BY seq LIMIT ?",
                            &ob->select_st)) < 0 ||
        (rc = store_prepare(st, "UPDATE outbox SET published_at = ?, entry_id = ? WHERE seq = ?",
                            &ob->mark_st)) < 0 ||
        (rc =
             store_prepare(st, "UPDATE outbox SET refused_at = ?, refused_reason = ? WHERE seq = ?",
                           &ob->refuse_st)) < 0 ||
        (rc = store_prepare(st, "SELECT COUNT(*) FROM outbox WHERE seq > ? AND " PENDING,
                            &ob->count_st)) < 0 ||
        (rc = store_prepare(st,
                            "INSERT OR REPLACE INTO outbox_passes (last_seq, first_seq, "
                            "published_at, entries) VALUES (?, ?, ?, ?)",
                            &ob->pass_st)) < 0 ||
        (rc = store_prepare(st, "SELECT MAX(last_seq) FROM outbox_passes", &ob->watermark_st)) <
            0 ||
        (rc = store_prepare(st, "SELECT COUNT(*) FROM outbox WHERE refused_at IS NOT NULL",
                            &ob->aside_st)) < 0 ||
        (rc = store_prepare(st, "PRAGMA data_version", &ob->version_st)) < 0)
        return rc;
    return 0;
}

static int prepare_all(struct outbox *ob)
{
    struct store *st = ob->store;
    int rc;

    if ((rc = create_table(ob)) < 0 || (rc = prepare_relay(ob)) < 0)
        return rc;
    if ((rc = store_prepare(st,
                            "INSERT INTO outbox(stream, event_id, type, data, trace, created_at, "
                            "traceparent) VALUES (?, ?, ?, ?, ?, ?, ?)",
                            &ob->insert_st)) < 0 ||
        (rc = store_prepare(st, "SELECT MAX(seq) FROM outbox", &ob->max_seq_st)) < 0 ||
        (rc = store_prepare(st, "SELECT seq, entry_id FROM outbox WHERE event_id = ?",
                            &ob->entry_st)) < 0 ||
        (rc = store_prepare(st,
                            "SELECT first_seq, entries FROM outbox_passes WHERE last_seq >= ? "
                            "ORDER BY last_seq LIMIT 1",
                            &ob->pass_entries_st)) < 0 ||
        (rc = store_prepare(
             st, "SELECT created_at FROM outbox WHERE seq > ? AND " PENDING " ORDER BY seq LIMIT 1",
             &ob->oldest_st)) < 0 ||
        (rc = store_prepare(st,
                            "SELECT MAX(last_seq) FROM (SELECT last_seq, published_at FROM "
                            "outbox_passes ORDER BY last_seq LIMIT ?2) WHERE published_at < ?1",
                            &ob->prune_upto_st)) < 0 ||
        (rc = store_prepare(st,
                            "DELETE FROM outbox WHERE seq <= ? AND refused_at IS NULL "
                            "AND seq < (SELECT MAX(seq) FROM outbox)",
                            &ob->prune_rows_st)) < 0 ||
        (rc = store_prepare(st, "DELETE FROM outbox_passes WHERE last_seq < ?",
                            &ob->prune_passes_st)) < 0)
        return rc;
    return 0;
}

/* What waits from before the start. */
static void load_counts(struct outbox *ob)
{
    ob->data_version = query_int(ob->version_st, 0);
    ob->watermark = ob->planned = query_int(ob->watermark_st, 0);
    recount(ob);
    if (ob->backlog > 0)
        log_info("outbox: %llu rows from before the start wait to be published",
                 (unsigned long long)ob->backlog);
    if (ob->set_aside > 0)
        log_warn("outbox: %llu rows are set aside (Redis refused them); `scripts/outbox list` "
                 "shows them",
                 (unsigned long long)ob->set_aside);
}

int outbox_new(struct service *svc, const struct outbox_config *cfg, struct outbox **out)
{
    struct outbox *ob = calloc(1, sizeof(*ob));
    int rc;

    if (ob == NULL)
        return -ENOMEM;
    ob->svc = svc;
    ob->store = svc->store;
    ob->redis = svc->redis;
    ob->cfg = *cfg;
    if (ob->cfg.batch == 0 || ob->cfg.batch > 1024)
        ob->cfg.batch = 256;
    snprintf(ob->source, sizeof(ob->source), "%s", cfg->source);
    ob->cfg.source = ob->source;
    snprintf(ob->maxlen, sizeof(ob->maxlen), "%lu", cfg->maxlen);
    if ((rc = prepare_all(ob)) < 0 || (rc = register_metrics(ob, svc->metrics)) < 0 ||
        (rc = store_on_commit(ob->store, on_commit, ob)) < 0 ||
        (rc = redis_listen(ob->redis, on_redis_state, ob)) < 0) {
        free(ob); /* statements belong to the store, which finalizes them */
        return rc;
    }
    load_counts(ob);
    uv_check_init(svc->loop, &ob->wake);
    uv_timer_init(svc->loop, &ob->sweep);
    uv_timer_init(svc->loop, &ob->backoff);
    uv_timer_init(svc->loop, &ob->flush);
    ob->wake.data = ob->sweep.data = ob->backoff.data = ob->flush.data = ob;
    ob->last_prune = uv_now(svc->loop);
    uv_timer_start(&ob->sweep, on_sweep, SWEEP_MS, SWEEP_MS);
    *out = ob;
    return 0;
}

static void on_closed(uv_handle_t *h)
{
    struct outbox *ob = h->data;
    outbox_closed_cb cb;
    void *data;

    if (--ob->pending_closes > 0)
        return;
    cb = ob->closed_cb;
    data = ob->closed_data;
    metrics_gauge_detach(ob->svc->metrics, ob);
    while (ob->unmarked != NULL) {
        struct relay_batch *b = ob->unmarked;

        ob->unmarked = b->next;
        free(b);
    }
    free(ob);
    cb(data);
}

/* A last try at the failed marks; what stays unmarked goes out again at
 * the next start (consumers de-duplicate by event id). 1 while a settle
 * waits for its commit. */
static int settle_before_close(struct outbox *ob)
{
    int rc = 0;

    if (ob->unmarked == NULL)
        return 0;
    if (!ob->close_settled) { /* one last attempt, not a retry loop */
        ob->close_settled = 1;
        rc = settle_failed(ob);
    }
    if (rc == 1 || ob->marking > 0)
        return 1;
    if (ob->unmarked != NULL)
        log_warn("outbox: stopping with a pass Redis answered but not recorded; its accepted "
                 "rows go out again at the next start");
    return 0;
}

/* Closes once nothing is in flight and there is nothing more to send (or no
 * way to send it, or no time left). */
static void on_group_ended(void *data, int ok)
{
    struct outbox *ob = data;

    (void)ok;
    scope(ob);
    ob->close_waits = 0;
    maybe_closed(ob);
}

static void maybe_closed(struct outbox *ob)
{
    if (ob->pending_closes > 0 || ob->close_waits || ob->inflight > 0 || ob->marking > 0 ||
        settle_before_close(ob))
        return;
    if (uv_is_active((uv_handle_t *)&ob->flush) && redis_is_up(ob->redis) && !ob->backoff_ms &&
        ob->unmarked == NULL && ob->backlog > 0) {
        if (store_group_pending(ob->store) &&
            store_when_durable(ob->store, on_group_ended, ob) == 0) {
            ob->close_waits = 1; /* a pass must not see the group's rows: after its COMMIT */
            return;
        }
        relay_pass(ob);
        if (ob->inflight > 0)
            return;
    }
    if (ob->backlog > 0)
        log_warn("outbox: stopping with %llu rows unpublished; they go out at the next start",
                 (unsigned long long)ob->backlog);
    ob->pending_closes = 4;
    uv_close((uv_handle_t *)&ob->wake, on_closed);
    uv_close((uv_handle_t *)&ob->sweep, on_closed);
    uv_close((uv_handle_t *)&ob->backoff, on_closed);
    uv_close((uv_handle_t *)&ob->flush, on_closed);
}

static void on_flush_timeout(uv_timer_t *t)
{
    scope(t->data);
    maybe_closed(t->data);
}

void outbox_close(struct outbox *ob, unsigned flush_ms, outbox_closed_cb done, void *data)
{
    ob->closing = 1;
    store_off_commit(ob->store, on_commit, ob);
    redis_unlisten(ob->redis, on_redis_state, ob);
    ob->closed_cb = done;
    ob->closed_data = data;
    uv_check_stop(&ob->wake);
    uv_timer_stop(&ob->sweep);
    uv_timer_stop(&ob->backoff);
    if (flush_ms > 0)
        uv_timer_start(&ob->flush, on_flush_timeout, flush_ms, 0);
    maybe_closed(ob);
}
