/* outbox.c -- the transactional outbox and its relay. See outbox.h.
 *
 * One relay pass at a time: select up to `batch` unpublished rows in seq
 * order, send one XADD per row down the service's command connection (hiredis
 * pipelines them), and when the last reply is in, mark the rows that were
 * accepted -- a prefix of the batch, so order holds -- in one transaction.
 * A failed or lost reply stops at that row; the rest is retried after a
 * backoff. The pass is started by the commit hook (through a uv_check, so
 * every commit of one loop iteration shares one pass), by Redis coming up,
 * and by a slow recovery sweep.
 *
 * seq is a rowid without AUTOINCREMENT: SQLite gives a new row MAX(seq) + 1,
 * so pruning never deletes the newest row -- an emptied table would start
 * again at 1, below published_upto, and nothing new would be published. */
#include "outbox.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include <hiredis/hiredis.h>
#include <jansson.h>
#include <sqlite3.h>
#include <uv.h>

#include "clock.h"
#include "log.h"
#include "metrics.h"
#include "redis.h"
#include "service.h"
#include "store.h"

#define SWEEP_MS 1000 /* recovery: a pass even when nothing woke us */
#define PRUNE_EVERY_MS 60000
#define PRUNE_BATCH 500
#define BACKOFF_MIN_MS 50
#define BACKOFF_MAX_MS 5000
#define XADD_ARGS 20

static const char schema[] =
    "CREATE TABLE IF NOT EXISTS outbox ("
    " seq INTEGER PRIMARY KEY,"
    " stream TEXT NOT NULL,"
    " event_id TEXT NOT NULL UNIQUE,"
    " type TEXT NOT NULL,"
    " data TEXT NOT NULL,"
    " trace TEXT,"
    " created_at INTEGER NOT NULL," /* us since the epoch */
    " published_at INTEGER,"        /* us, NULL until Redis accepted it */
    " entry_id TEXT);"              /* the stream entry id Redis gave it */
    "CREATE INDEX IF NOT EXISTS outbox_unpublished ON outbox(seq) WHERE published_at IS NULL;";

static const double latency_bounds[] = {0.00005, 0.0001,  0.00015, 0.0002, 0.0003, 0.0004,
                                        0.0005,  0.00075, 0.001,   0.0015, 0.002,  0.003,
                                        0.005,   0.01,    0.05,    0.25};

struct outbox {
    struct service *svc;
    struct store *store;
    struct redis *redis; /* borrowed from svc */
    char source[32];
    struct outbox_config cfg;
    char maxlen[24];

    struct sqlite3_stmt *insert_st, *select_st, *mark_st, *max_seq_st, *oldest_st, *prune_st;
    struct sqlite3_stmt *entry_st;
    uv_check_t wake;    /* runs the relay at the end of the loop iteration */
    uv_timer_t sweep;   /* recovery pass and pruning */
    uv_timer_t backoff; /* after a failed pass */
    uv_timer_t flush;   /* bounds outbox_close's drain */
    unsigned backoff_ms;
    uint64_t last_prune; /* uv_now ms */

    int64_t max_seq;        /* highest committed seq */
    int64_t published_upto; /* every row at or below is published */
    int inflight;           /* a pass is waiting for replies */
    int closing;
    unsigned pending_closes;
    outbox_closed_cb closed_cb;
    void *closed_data;

    struct metrics_histogram *latency;
    struct metrics_counter *published, *failed;
};

/* One relay pass: the rows sent and their replies. */
struct relay_batch {
    struct outbox *ob;
    size_t n, answered;
    size_t accepted; /* replies OK before the first failure */
    int failed;
    struct {
        int64_t seq;
        int64_t created_at;
        int64_t replied_at; /* us: Redis's answer arrived */
        char entry_id[32];
    } rows[];
};

static void relay_pass(struct outbox *ob);
static void maybe_closed(struct outbox *ob);

/* ---------------------------------------------------------------------------
 * Appending
 * ------------------------------------------------------------------------- */

int outbox_append(struct outbox *ob, const char *stream, const char *type,
                  const struct json_t *data, const char *trace, char event_id[IDS_UUID_LEN + 1])
{
    char id[IDS_UUID_LEN + 1];
    char *text;
    int rc;

    if (!store_in_txn(ob->store))
        return -EINVAL;
    text = json_dumps(data, JSON_COMPACT);
    if (text == NULL)
        return -ENOMEM;
    ids_uuid7(id);
    sqlite3_bind_text(ob->insert_st, 1, stream, -1, SQLITE_STATIC);
    sqlite3_bind_text(ob->insert_st, 2, id, -1, SQLITE_STATIC);
    sqlite3_bind_text(ob->insert_st, 3, type, -1, SQLITE_STATIC);
    sqlite3_bind_text(ob->insert_st, 4, text, -1, SQLITE_STATIC);
    if (trace != NULL)
        sqlite3_bind_text(ob->insert_st, 5, trace, -1, SQLITE_STATIC);
    else
        sqlite3_bind_null(ob->insert_st, 5);
    sqlite3_bind_int64(ob->insert_st, 6, clock_now_us());
    rc = sqlite3_step(ob->insert_st) == SQLITE_DONE ? 0 : -EIO;
    if (rc < 0)
        log_error("outbox: append %s to %s failed: %s", type, stream, store_errmsg(ob->store));
    store_reset(ob->insert_st);
    free(text);
    if (rc == 0 && event_id != NULL)
        memcpy(event_id, id, sizeof(id));
    return rc;
}

int outbox_entry_id(struct outbox *ob, const char *event_id, char *buf, size_t len)
{
    int rc = -ENOENT;

    sqlite3_bind_text(ob->entry_st, 1, event_id, -1, SQLITE_STATIC);
    if (sqlite3_step(ob->entry_st) == SQLITE_ROW &&
        sqlite3_column_type(ob->entry_st, 0) != SQLITE_NULL) {
        const char *id = (const char *)sqlite3_column_text(ob->entry_st, 0);

        rc = snprintf(buf, len, "%s", id) >= (int)len ? -ENOSPC : 0;
    }
    store_reset(ob->entry_st);
    return rc;
}

uint64_t outbox_backlog(const struct outbox *ob)
{
    return ob->max_seq > ob->published_upto ? (uint64_t)(ob->max_seq - ob->published_upto) : 0;
}

int outbox_overloaded(const struct outbox *ob)
{
    return ob->cfg.max_backlog > 0 && outbox_backlog(ob) > ob->cfg.max_backlog;
}

static int64_t query_int(struct sqlite3_stmt *st, int64_t dflt)
{
    int64_t v = dflt;

    if (sqlite3_step(st) == SQLITE_ROW && sqlite3_column_type(st, 0) != SQLITE_NULL)
        v = sqlite3_column_int64(st, 0);
    store_reset(st);
    return v;
}

static void on_wake(uv_check_t *h)
{
    struct outbox *ob = h->data;

    uv_check_stop(h);
    relay_pass(ob);
}

/* After every commit: learn the new rows and wake the relay. */
static void on_commit(struct store *st, void *data)
{
    struct outbox *ob = data;

    (void)st;
    ob->max_seq = query_int(ob->max_seq_st, 0);
    if (ob->max_seq > ob->published_upto && !uv_is_active((uv_handle_t *)&ob->wake))
        uv_check_start(&ob->wake, on_wake);
}

/* ---------------------------------------------------------------------------
 * The relay
 * ------------------------------------------------------------------------- */

static void on_backoff(uv_timer_t *t)
{
    relay_pass(t->data);
}

/* Marks the first n rows of b published, with their entry ids, in one
 * transaction. */
static int mark_published(struct outbox *ob, const struct relay_batch *b, size_t n)
{
    int64_t now = clock_now_us();
    int rc;

    if ((rc = store_begin(ob->store)) < 0)
        return rc;
    for (size_t i = 0; i < n && rc == 0; i++) {
        sqlite3_bind_int64(ob->mark_st, 1, now);
        sqlite3_bind_text(ob->mark_st, 2, b->rows[i].entry_id, -1, SQLITE_STATIC);
        sqlite3_bind_int64(ob->mark_st, 3, b->rows[i].seq);
        rc = sqlite3_step(ob->mark_st) == SQLITE_DONE ? 0 : -EIO;
        store_reset(ob->mark_st);
    }
    if (rc < 0) {
        log_error("outbox: marking rows published failed: %s", store_errmsg(ob->store));
        store_rollback(ob->store);
        return rc;
    }
    return store_commit(ob->store);
}

static void batch_done(struct relay_batch *b)
{
    struct outbox *ob = b->ob;

    ob->inflight = 0;
    if (b->accepted > 0) {
        int64_t last = b->rows[b->accepted - 1].seq;

        if (mark_published(ob, b, b->accepted) == 0) {
            ob->published_upto = last;
            for (size_t i = 0; i < b->accepted; i++)
                metrics_histogram_observe(
                    ob->latency, (double)(b->rows[i].replied_at - b->rows[i].created_at) / 1e6);
            metrics_counter_add(ob->published, b->accepted);
        } else {
            /* Published but not marked: they go again (at least once),
             * after the backoff rather than in a tight loop of XADDs. */
            b->failed = 1;
        }
    }
    if (b->failed) {
        metrics_counter_add(ob->failed, 1);
        ob->backoff_ms = ob->backoff_ms ? ob->backoff_ms * 2 : BACKOFF_MIN_MS;
        if (ob->backoff_ms > BACKOFF_MAX_MS)
            ob->backoff_ms = BACKOFF_MAX_MS;
        if (!ob->closing)
            uv_timer_start(&ob->backoff, on_backoff, ob->backoff_ms, 0);
    } else {
        ob->backoff_ms = 0;
    }
    free(b);
    if (ob->closing)
        maybe_closed(ob);
    else if (!uv_is_active((uv_handle_t *)&ob->backoff) && outbox_backlog(ob) > 0)
        relay_pass(ob);
}

static void on_xadd(struct redis *r, struct redisReply *reply, void *data)
{
    struct relay_batch *b = data;
    size_t i = b->answered++;

    (void)r;
    if (reply == NULL || reply->type == REDIS_REPLY_ERROR) {
        if (!b->failed && reply != NULL)
            log_warn("outbox: XADD of row %lld refused: %s", (long long)b->rows[i].seq, reply->str);
        b->failed = 1;
    } else if (!b->failed) {
        b->rows[i].replied_at = clock_now_us();
        b->accepted = i + 1;
        if (reply->type == REDIS_REPLY_STRING)
            snprintf(b->rows[i].entry_id, sizeof(b->rows[i].entry_id), "%s", reply->str);
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
    ARG("source", 6), ARG(ob->source, strlen(ob->source));
    ARG("ts", 2), ARG(ts, strlen(ts));
    ARG("v", 1), ARG("1", 1);
#undef COL
#undef ARG
    return redis_command(ob->redis, on_xadd, b, n, argv, len);
}

static void relay_pass(struct outbox *ob)
{
    struct relay_batch *b;
    int rc = 0;

    if (ob->inflight || !redis_is_up(ob->redis) || outbox_backlog(ob) == 0)
        return;
    b = malloc(sizeof(*b) + ob->cfg.batch * sizeof(b->rows[0]));
    if (b == NULL)
        return;
    memset(b, 0, sizeof(*b));
    b->ob = ob;
    sqlite3_bind_int64(ob->select_st, 1, ob->cfg.batch);
    while (rc == 0 && sqlite3_step(ob->select_st) == SQLITE_ROW) {
        rc = send_row(ob, b, ob->select_st);
        if (rc == 0) {
            b->rows[b->n].seq = sqlite3_column_int64(ob->select_st, 0);
            b->rows[b->n].created_at = sqlite3_column_int64(ob->select_st, 6);
            b->n++;
        }
    }
    store_reset(ob->select_st);
    if (b->n == 0) {
        /* Nothing sent (or Redis refused the first send): the sweep retries. */
        free(b);
        return;
    }
    ob->inflight = 1;
    if (rc < 0)
        b->failed = 1; /* the rows sent still get their replies */
    /* b now belongs to the XADD callbacks: the last reply frees it */
} /* NOLINT(clang-analyzer-unix.Malloc) */

/* ---------------------------------------------------------------------------
 * Upkeep: recovery sweep, pruning, metrics
 * ------------------------------------------------------------------------- */

/* Published rows older than the retention, in batches; never the newest
 * row (see the top of the file). */
static void prune(struct outbox *ob)
{
    int64_t cutoff = clock_now_us() - (int64_t)ob->cfg.retention_ms * 1000;
    int changes;

    if (store_in_txn(ob->store))
        return;
    sqlite3_bind_int64(ob->prune_st, 1, cutoff);
    sqlite3_bind_int(ob->prune_st, 2, PRUNE_BATCH);
    if (sqlite3_step(ob->prune_st) != SQLITE_DONE)
        log_warn("outbox: pruning failed: %s", store_errmsg(ob->store));
    changes = sqlite3_changes(store_db(ob->store));
    store_reset(ob->prune_st);
    if (changes > 0)
        log_debug("outbox: pruned %d published rows", changes);
}

/* Every minute, or as often as the retention asks, down to every sweep. */
static uint64_t prune_every_ms(const struct outbox *ob)
{
    uint64_t r = ob->cfg.retention_ms;

    return r >= PRUNE_EVERY_MS ? PRUNE_EVERY_MS : r > SWEEP_MS ? r : SWEEP_MS;
}

static void on_sweep(uv_timer_t *t)
{
    struct outbox *ob = t->data;
    uint64_t now = uv_now(t->loop);

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
    if (up && !ob->closing) {
        ob->backoff_ms = 0;
        uv_timer_stop(&ob->backoff);
        relay_pass(ob);
    }
}

static double gauge_backlog(void *data)
{
    return (double)outbox_backlog(data);
}

static double gauge_oldest(void *data)
{
    struct outbox *ob = data;
    int64_t created;

    if (outbox_backlog(ob) == 0)
        return 0;
    created = query_int(ob->oldest_st, 0);
    return created > 0 ? (double)(clock_now_us() - created) / 1e6 : 0;
}

static int register_metrics(struct outbox *ob, struct metrics *m)
{
    ob->latency = metrics_histogram(m, "outbox_publish_latency_seconds",
                                    "Time from outbox append to Redis accepting the XADD.", "",
                                    latency_bounds, ARRAY_SIZE(latency_bounds));
    ob->published = metrics_counter(m, "outbox_published_total", "Outbox rows published.", "");
    ob->failed = metrics_counter(m, "outbox_publish_failures_total",
                                 "Relay passes stopped by a refused or lost XADD.", "");
    if (ob->latency == NULL || ob->published == NULL || ob->failed == NULL)
        return -ENOMEM;
    if (metrics_gauge(m, "outbox_backlog", "Committed outbox rows not yet published.", "",
                      gauge_backlog, ob) < 0 ||
        metrics_gauge(m, "outbox_oldest_unpublished_age_seconds",
                      "Age of the oldest unpublished outbox row.", "", gauge_oldest, ob) < 0)
        return -ENOMEM;
    return 0;
}

/* ---------------------------------------------------------------------------
 * Life cycle
 * ------------------------------------------------------------------------- */

static int prepare_all(struct outbox *ob)
{
    struct store *st = ob->store;
    int rc;

    if (sqlite3_exec(store_db(st), schema, NULL, NULL, NULL) != SQLITE_OK) {
        log_error("outbox: cannot create its table: %s", store_errmsg(st));
        return -EIO;
    }
    if ((rc = store_prepare(st,
                            "INSERT INTO outbox(stream, event_id, type, data, trace, created_at) "
                            "VALUES (?, ?, ?, ?, ?, ?)",
                            &ob->insert_st)) < 0 ||
        (rc = store_prepare(st,
                            "SELECT seq, stream, event_id, type, data, trace, created_at "
                            "FROM outbox WHERE published_at IS NULL ORDER BY seq LIMIT ?",
                            &ob->select_st)) < 0 ||
        (rc = store_prepare(st, "UPDATE outbox SET published_at = ?, entry_id = ? WHERE seq = ?",
                            &ob->mark_st)) < 0 ||
        (rc = store_prepare(st, "SELECT MAX(seq) FROM outbox", &ob->max_seq_st)) < 0 ||
        (rc = store_prepare(st, "SELECT entry_id FROM outbox WHERE event_id = ?", &ob->entry_st)) <
            0 ||
        (rc = store_prepare(st,
                            "SELECT created_at FROM outbox WHERE published_at IS NULL "
                            "ORDER BY seq LIMIT 1",
                            &ob->oldest_st)) < 0 ||
        (rc = store_prepare(st,
                            "DELETE FROM outbox WHERE seq IN (SELECT seq FROM outbox "
                            "WHERE published_at IS NOT NULL AND published_at < ? "
                            "AND seq < (SELECT MAX(seq) FROM outbox) ORDER BY seq LIMIT ?)",
                            &ob->prune_st)) < 0)
        return rc;
    return 0;
}

/* Where the relay starts: below the first unpublished row. */
static int load_position(struct outbox *ob)
{
    struct sqlite3_stmt *first;
    int64_t f;
    int rc;

    rc = store_prepare(ob->store, "SELECT MIN(seq) FROM outbox WHERE published_at IS NULL", &first);
    if (rc < 0)
        return rc;
    ob->max_seq = query_int(ob->max_seq_st, 0);
    f = query_int(first, 0);
    ob->published_upto = f > 0 ? f - 1 : ob->max_seq;
    if (outbox_backlog(ob) > 0)
        log_info("outbox: %llu rows from before the start wait to be published",
                 (unsigned long long)outbox_backlog(ob));
    return 0;
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
    if ((rc = prepare_all(ob)) < 0 || (rc = load_position(ob)) < 0 ||
        (rc = register_metrics(ob, svc->metrics)) < 0 ||
        (rc = store_on_commit(ob->store, on_commit, ob)) < 0 ||
        (rc = redis_listen(ob->redis, on_redis_state, ob)) < 0) {
        free(ob); /* statements belong to the store, which finalizes them */
        return rc;
    }
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
    free(ob);
    cb(data);
}

/* Closes once nothing is in flight and there is nothing more to send (or no
 * way to send it, or no time left). */
static void maybe_closed(struct outbox *ob)
{
    if (ob->pending_closes > 0 || ob->inflight)
        return;
    if (uv_is_active((uv_handle_t *)&ob->flush) && redis_is_up(ob->redis) && !ob->backoff_ms &&
        outbox_backlog(ob) > 0) {
        relay_pass(ob);
        if (ob->inflight)
            return;
    }
    if (outbox_backlog(ob) > 0)
        log_warn("outbox: stopping with %llu rows unpublished; they go out at the next start",
                 (unsigned long long)outbox_backlog(ob));
    ob->pending_closes = 4;
    uv_close((uv_handle_t *)&ob->wake, on_closed);
    uv_close((uv_handle_t *)&ob->sweep, on_closed);
    uv_close((uv_handle_t *)&ob->backoff, on_closed);
    uv_close((uv_handle_t *)&ob->flush, on_closed);
}

static void on_flush_timeout(uv_timer_t *t)
{
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
