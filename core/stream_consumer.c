/* stream_consumer.c -- a consumer group member. See stream_consumer.h.
 *
 * The read cycle, on the consumer's own connection (blk):
 *
 *   ensure group --> read history (ID 0 .. own pending) --> read new (>)
 *        ^              |  (delivery counts from XPENDING)      |
 *        |              v                                       v
 *     NOGROUP        process batch: one transaction, a savepoint per entry;
 *                    then XACK / MULTI{XADD dlq, XACK} on the command
 *                    connection; a failure stops the batch and backs off
 *                    into the history read.
 *
 * State lives in sc->state; every callback checks sc->closing first. The
 * batch in hand is owned here (entries are copied out of the hiredis reply).
 * Commands on the shared command connection whose replies we need (XPENDING,
 * XAUTOCLAIM, XINFO) are counted in cmd_inflight, and sc is freed only when
 * none is left. */
#include "stream_consumer.h"

#include <errno.h>
#include <stdarg.h>
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
#include "streams/streams.h"

#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 5000
#define STATS_MS 5000
#define PRUNE_MS 60000
#define PRUNE_BATCH 500
/* Arguments of one command: a dead letter's fields, or the ids of a whole
 * batch (XACK, XCLAIM) after the command's own head. */
#define MAX_ARGS (CONFIG_CONSUMER_BATCH_MAX + 8)
#define SC_COUNTER_SLOTS 16 /* stream_events_total series kept at hand */

static const char inbox_schema[] =
    "CREATE TABLE IF NOT EXISTS inbox ("
    " event_id TEXT PRIMARY KEY,"
    " stream TEXT NOT NULL,"
    " processed_at INTEGER NOT NULL" /* ms since the epoch */
    ") WITHOUT ROWID;"
    "CREATE INDEX IF NOT EXISTS inbox_by_age ON inbox(stream, processed_at);";

enum sc_state {
    SC_WAITING,  /* for the connection, or for a backoff timer */
    SC_GROUP,    /* XGROUP CREATE in flight */
    SC_READING,  /* XREADGROUP in flight */
    SC_COUNTING, /* XPENDING (delivery counts of a history batch) in flight */
    SC_ASYNC,    /* an asynchronous handler holds the entry in hand */
    SC_HOLDING,  /* the batch waits to retry an entry whose dependency is down */
};

enum outcome { OUT_TODO, OUT_ACK, OUT_DLQ, OUT_FAIL, OUT_ASYNC, OUT_RETRY };

struct entry {
    void *mem; /* one block: the fields array, their strings, the id */
    char *entry_id;
    struct stream_field *fields;
    size_t nfields;
    unsigned deliveries;
    enum outcome outcome;
    const char *result; /* metric label */
    char *error;        /* the dead letter's reason */
    struct envelope env;
    int parsed; /* 1: env holds a reference */
};

struct stream_done {
    struct stream_consumer *sc;
};

struct stream_consumer {
    struct service *svc;
    struct store *store;
    struct redis *cmd; /* borrowed: the service's command connection */
    struct redis *blk; /* ours: XGROUP CREATE and XREADGROUP only */
    struct stream_consumer_config cfg;
    char stream[64], dlq[72], group[32], consumer[192];
    stream_consumer_msg_cb on_msg;
    void *data;

    enum sc_state state;
    int history;      /* reading our own pending entries */
    char cursor[48];  /* history: the last id read */
    int need_history; /* XAUTOCLAIM claimed entries: read history next */
    char claim_cursor[48];
    unsigned backoff_ms;

    struct entry *batch;
    size_t n, next;          /* entries in hand, and the first not yet settled */
    struct stream_msg msg;   /* of the entry with an async handler */
    struct stream_done done; /* its token */

    uv_timer_t retry; /* backoff */
    uv_timer_t claim; /* XAUTOCLAIM and lease refresh */
    uv_timer_t stats; /* XINFO GROUPS, inbox pruning */
    uv_timer_t chaos; /* CHAOS_DELAY_MS before a handler */

    /* Fault injection for tests and drills (CHAOS_* settings, off by
     * default): handlers of these types fail, or start after a delay. */
    const char *chaos_fail_types, *chaos_delay_types;
    unsigned chaos_delay_ms;
    int chaos_state; /* of the entry in hand: 0 none, 1 delaying, 2 delay over */
    uint64_t last_prune;
    double pending, lag;

    struct {
        char type[STREAMS_MAX_TYPE];
        const char *result; /* a literal: compared by address */
        struct metrics_counter *c;
    } counters[SC_COUNTER_SLOTS];

    struct sqlite3_stmt *seen_st, *remember_st, *prune_st, *save_st, *release_st, *undo_st;

    unsigned cmd_inflight;
    int closing, close_started;
    unsigned pending_closes;
    stream_consumer_closed_cb closed_cb;
    void *closed_data;
};

static void read_next(struct stream_consumer *sc);
static void process(struct stream_consumer *sc);
static void maybe_close(struct stream_consumer *sc);

/* ---------------------------------------------------------------------------
 * Helpers
 * ------------------------------------------------------------------------- */

int stream_msg_reject(struct stream_msg *msg, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg->reason, sizeof(msg->reason), fmt, ap);
    va_end(ap);
    return STREAM_CONSUMER_REJECT;
}

/* stream_events_total, with the last series looked up kept per (type,
 * result): a batch of one type costs no label formatting. */
static void count_event(struct stream_consumer *sc, const char *type, const char *result)
{
    char labels[256], esc[STREAMS_MAX_TYPE * 2];
    struct metrics_counter *c;
    size_t slot = (strlen(type) * 31 + (size_t)result[0] * 7 + strlen(result)) % SC_COUNTER_SLOTS;

    if (sc->counters[slot].c != NULL && sc->counters[slot].result == result &&
        strcmp(sc->counters[slot].type, type) == 0) {
        metrics_counter_add(sc->counters[slot].c, 1);
        return;
    }

    if (metrics_escape_label(type, esc, sizeof(esc)) < 0)
        snprintf(esc, sizeof(esc), "invalid");
    snprintf(labels, sizeof(labels), "stream=\"%s\",type=\"%s\",result=\"%s\"", sc->stream, esc,
             result);
    c = metrics_counter(sc->svc->metrics, "stream_events_total",
                        "Stream entries handled, by stream, type and result.", labels);
    if (c == NULL)
        return;
    metrics_counter_add(c, 1);
    if (strlen(type) < sizeof(sc->counters[slot].type)) {
        memcpy(sc->counters[slot].type, type, strlen(type) + 1);
        sc->counters[slot].result = result;
        sc->counters[slot].c = c;
    }
}

static void entry_release(struct entry *e)
{
    if (e->parsed)
        envelope_release(&e->env);
    free(e->error);
    free(e->mem);
}

static void batch_free(struct stream_consumer *sc)
{
    for (size_t i = 0; i < sc->n; i++)
        entry_release(&sc->batch[i]);
    free(sc->batch);
    sc->batch = NULL;
    sc->n = sc->next = 0;
}

static void set_outcome(struct entry *e, enum outcome o, const char *result, const char *error)
{
    e->outcome = o;
    e->result = result;
    if (error != NULL) {
        free(e->error);
        e->error = strdup(error);
    }
}

/* Sends a command whose reply sc waits for. */
static int cmd_send(struct stream_consumer *sc, redis_reply_cb cb, int argc, const char **argv,
                    const size_t *lens)
{
    int rc = redis_command(sc->cmd, cb, sc, argc, argv, lens);

    if (rc == 0 && cb != NULL)
        sc->cmd_inflight++;
    return rc;
}

static void on_retry(uv_timer_t *t)
{
    struct stream_consumer *sc = t->data;

    if (sc->closing) {
        maybe_close(sc);
        return;
    }
    read_next(sc);
}

/* Waits before the next read: after an error, a failed entry, NOGROUP. The
 * next read starts with our own pending entries. */
static void back_off(struct stream_consumer *sc)
{
    sc->backoff_ms = sc->backoff_ms ? sc->backoff_ms * 2 : BACKOFF_MIN_MS;
    if (sc->backoff_ms > BACKOFF_MAX_MS)
        sc->backoff_ms = BACKOFF_MAX_MS;
    sc->state = SC_WAITING;
    sc->history = 1;
    snprintf(sc->cursor, sizeof(sc->cursor), "0");
    if (sc->closing) {
        maybe_close(sc);
        return;
    }
    uv_timer_start(&sc->retry, on_retry,
                   sc->backoff_ms / 2 + (unsigned)random() % (sc->backoff_ms / 2 + 1), 0);
}

/* ---------------------------------------------------------------------------
 * Copying entries out of a reply: [id, [field, value, ...]] (nil fields for
 * an entry deleted while pending)
 * ------------------------------------------------------------------------- */

static int entry_copy(struct entry *e, const redisReply *r)
{
    const redisReply *id, *kv;
    size_t bytes, nf;
    char *p;

    if (r->type != REDIS_REPLY_ARRAY || r->elements != 2 ||
        r->element[0]->type != REDIS_REPLY_STRING)
        return -EPROTO;
    id = r->element[0];
    kv = r->element[1];
    nf = kv->type == REDIS_REPLY_ARRAY ? kv->elements / 2 : 0;
    bytes = id->len + 1 + nf * sizeof(struct stream_field);
    for (size_t i = 0; i < nf * 2; i++) {
        if (kv->element[i]->type != REDIS_REPLY_STRING)
            return -EPROTO;
        bytes += kv->element[i]->len + 1;
    }
    p = malloc(bytes);
    if (p == NULL)
        return -ENOMEM;
    memset(e, 0, sizeof(*e));
    e->mem = p;
    e->fields = (struct stream_field *)(void *)p;
    e->nfields = nf;
    p += nf * sizeof(struct stream_field);
    for (size_t i = 0; i < nf; i++) {
        const redisReply *k = kv->element[2 * i], *v = kv->element[2 * i + 1];

        e->fields[i].name = memcpy(p, k->str, k->len);
        e->fields[i].name_len = k->len;
        p[k->len] = '\0';
        p += k->len + 1;
        e->fields[i].value = memcpy(p, v->str, v->len);
        e->fields[i].value_len = v->len;
        p[v->len] = '\0';
        p += v->len + 1;
    }
    memcpy(p, id->str, id->len);
    p[id->len] = '\0';
    e->entry_id = p;
    e->deliveries = 1;
    if (kv->type != REDIS_REPLY_ARRAY)
        set_outcome(e, OUT_ACK, "dangling", NULL); /* deleted while pending */
    return 0;
}

/* ---------------------------------------------------------------------------
 * The group
 * ------------------------------------------------------------------------- */

static void on_group(struct redis *r, struct redisReply *reply, void *data)
{
    struct stream_consumer *sc = data;

    (void)r;
    if (sc->closing) {
        sc->state = SC_WAITING;
        maybe_close(sc);
        return;
    }
    if (reply == NULL) {
        sc->state = SC_WAITING; /* the connection's listener restarts us */
        return;
    }
    if (reply->type == REDIS_REPLY_ERROR && strncmp(reply->str, "BUSYGROUP", 9) != 0) {
        log_warn("consumer %s: XGROUP CREATE failed: %s", sc->stream, reply->str);
        back_off(sc);
        return;
    }
    sc->history = 1;
    snprintf(sc->cursor, sizeof(sc->cursor), "0");
    sc->state = SC_WAITING;
    read_next(sc);
}

static void ensure_group(struct stream_consumer *sc)
{
    const char *argv[] = {"XGROUP", "CREATE", sc->stream, sc->group, "0", "MKSTREAM"};

    sc->state = SC_GROUP;
    if (redis_command(sc->blk, on_group, sc, 6, argv, NULL) < 0)
        sc->state = SC_WAITING;
}

/* ---------------------------------------------------------------------------
 * Reading
 * ------------------------------------------------------------------------- */

static void on_pending_counts(struct redis *r, struct redisReply *reply, void *data);

/* Takes the entries of an XREADGROUP reply into sc->batch. */
static int batch_take(struct stream_consumer *sc, const redisReply *entries)
{
    int rc = 0;

    sc->batch = calloc(entries->elements ? entries->elements : 1, sizeof(*sc->batch));
    if (sc->batch == NULL)
        return -ENOMEM;
    for (size_t i = 0; i < entries->elements && rc == 0; i++) {
        rc = entry_copy(&sc->batch[i], entries->element[i]);
        if (rc == 0)
            sc->n++;
    }
    return rc;
}

/* Asks for the delivery counts of a history batch (XREADGROUP with an id
 * does not report them). */
static void fetch_counts(struct stream_consumer *sc)
{
    char count[16];
    const char *argv[] = {
        "XPENDING", sc->stream,  sc->group, sc->batch[0].entry_id, sc->batch[sc->n - 1].entry_id,
        count,      sc->consumer};

    snprintf(count, sizeof(count), "%zu", sc->n);
    sc->state = SC_COUNTING;
    if (cmd_send(sc, on_pending_counts, 7, argv, NULL) < 0) {
        batch_free(sc);
        back_off(sc);
    }
}

static void on_pending_counts(struct redis *r, struct redisReply *reply, void *data)
{
    struct stream_consumer *sc = data;

    (void)r;
    sc->cmd_inflight--;
    if (sc->closing || reply == NULL || reply->type != REDIS_REPLY_ARRAY) {
        batch_free(sc);
        if (sc->closing) {
            sc->state = SC_WAITING;
            maybe_close(sc);
        } else {
            back_off(sc);
        }
        return;
    }
    for (size_t i = 0; i < reply->elements; i++) {
        const redisReply *p = reply->element[i];

        if (p->type != REDIS_REPLY_ARRAY || p->elements < 4 ||
            p->element[0]->type != REDIS_REPLY_STRING)
            continue;
        for (size_t j = 0; j < sc->n; j++) {
            if (strcmp(sc->batch[j].entry_id, p->element[0]->str) == 0)
                sc->batch[j].deliveries = (unsigned)p->element[3]->integer;
        }
    }
    process(sc);
}

static void on_read(struct redis *r, struct redisReply *reply, void *data)
{
    struct stream_consumer *sc = data;
    const redisReply *entries;

    (void)r;
    sc->state = SC_WAITING;
    if (sc->closing) {
        maybe_close(sc);
        return;
    }
    if (reply == NULL)
        return; /* connection lost: the listener restarts us when it is back */
    if (reply->type == REDIS_REPLY_ERROR) {
        if (strncmp(reply->str, "NOGROUP", 7) == 0) {
            log_warn("consumer %s: the group is gone (%s); recreating it", sc->stream, reply->str);
            ensure_group(sc);
        } else {
            log_warn("consumer %s: XREADGROUP failed: %s", sc->stream, reply->str);
            back_off(sc);
        }
        return;
    }
    if (reply->type != REDIS_REPLY_ARRAY || reply->elements == 0) {
        read_next(sc); /* BLOCK timed out */
        return;
    }
    entries = reply->element[0]->type == REDIS_REPLY_ARRAY && reply->element[0]->elements == 2
                  ? reply->element[0]->element[1]
                  : NULL;
    if (entries == NULL || entries->type != REDIS_REPLY_ARRAY) {
        back_off(sc);
        return;
    }
    if (entries->elements == 0) {
        if (sc->history)
            sc->history = 0; /* our pending list is drained */
        read_next(sc);
        return;
    }
    if (batch_take(sc, entries) < 0) {
        batch_free(sc);
        back_off(sc);
        return;
    }
    if (sc->history) {
        snprintf(sc->cursor, sizeof(sc->cursor), "%s", sc->batch[sc->n - 1].entry_id);
        fetch_counts(sc);
        return;
    }
    process(sc);
}

static void read_next(struct stream_consumer *sc)
{
    char count[16], block[16];
    const char *argv[11];
    int n = 0;

    if (sc->closing || sc->state != SC_WAITING || sc->batch != NULL || !redis_is_up(sc->blk))
        return;
    if (sc->need_history && !sc->history) {
        sc->need_history = 0;
        sc->history = 1;
        snprintf(sc->cursor, sizeof(sc->cursor), "0");
    }
    snprintf(count, sizeof(count), "%u", sc->cfg.batch);
    snprintf(block, sizeof(block), "%u", sc->cfg.block_ms);
    argv[n++] = "XREADGROUP";
    argv[n++] = "GROUP";
    argv[n++] = sc->group;
    argv[n++] = sc->consumer;
    argv[n++] = "COUNT";
    argv[n++] = count;
    if (!sc->history) {
        argv[n++] = "BLOCK";
        argv[n++] = block;
    }
    argv[n++] = "STREAMS";
    argv[n++] = sc->stream;
    argv[n++] = sc->history ? sc->cursor : ">";
    sc->state = SC_READING;
    if (redis_command(sc->blk, on_read, sc, n, argv, NULL) < 0)
        sc->state = SC_WAITING;
}

static void on_blk_state(struct redis *r, int up, void *data)
{
    struct stream_consumer *sc = data;

    (void)r;
    if (up && !sc->closing && sc->state == SC_WAITING && sc->batch == NULL) {
        uv_timer_stop(&sc->retry);
        ensure_group(sc);
    }
}

/* ---------------------------------------------------------------------------
 * Processing a batch: one transaction, a savepoint per entry
 * ------------------------------------------------------------------------- */

static int step_done(struct sqlite3_stmt *st)
{
    int rc = sqlite3_step(st);

    store_reset(st);
    return rc == SQLITE_DONE || rc == SQLITE_ROW ? 0 : -EIO;
}

static int seen_before(struct stream_consumer *sc, const char *id)
{
    int rc;

    sqlite3_bind_text(sc->seen_st, 1, id, -1, SQLITE_STATIC);
    rc = sqlite3_step(sc->seen_st);
    store_reset(sc->seen_st);
    return rc == SQLITE_ROW;
}

static int remember(struct stream_consumer *sc, const char *id)
{
    sqlite3_bind_text(sc->remember_st, 1, id, -1, SQLITE_STATIC);
    sqlite3_bind_text(sc->remember_st, 2, sc->stream, -1, SQLITE_STATIC);
    sqlite3_bind_int64(sc->remember_st, 3, clock_now_ms());
    return step_done(sc->remember_st);
}

static void msg_fill(struct stream_consumer *sc, struct entry *e, struct stream_msg *m)
{
    m->stream = sc->stream;
    m->entry_id = e->entry_id;
    m->id = e->env.id;
    m->type = e->env.type;
    m->trace = e->env.trace;
    m->source = e->env.source;
    m->data = e->env.data;
    m->deliveries = e->deliveries;
    m->done = &sc->done;
}

/* Settles what a handler returned for e (inside the entry's savepoint). */
static void settle(struct stream_consumer *sc, struct entry *e, int rc)
{
    char why[STREAM_MSG_REASON + 64];

    if (rc == 0 && remember(sc, e->env.id) < 0)
        rc = -EIO;
    if (rc == 0) {
        step_done(sc->release_st);
        set_outcome(e, OUT_ACK, "ok", NULL);
        return;
    }
    step_done(sc->undo_st);
    step_done(sc->release_st);
    if (rc == STREAM_CONSUMER_SKIP) {
        set_outcome(e, OUT_ACK, "skipped", NULL);
    } else if (rc == STREAM_CONSUMER_REJECT) {
        snprintf(why, sizeof(why), "rejected: %s", sc->msg.reason[0] ? sc->msg.reason : "refused");
        set_outcome(e, OUT_DLQ, "rejected", why);
    } else if (rc == STREAM_CONSUMER_ASYNC) {
        e->outcome = OUT_ASYNC;
    } else if (rc == -EAGAIN) {
        set_outcome(e, OUT_RETRY, "retry", NULL);
    } else if (e->deliveries >= sc->cfg.max_deliveries) {
        snprintf(why, sizeof(why), "handler failed on delivery %u of %u: %s", e->deliveries,
                 sc->cfg.max_deliveries, strerror(rc < 0 ? -rc : EINVAL));
        set_outcome(e, OUT_DLQ, "dead_lettered", why);
    } else {
        log_warn("consumer %s: %s %s failed (delivery %u of %u): %s; it stays pending", sc->stream,
                 e->env.type, e->entry_id, e->deliveries, sc->cfg.max_deliveries,
                 strerror(rc < 0 ? -rc : EINVAL));
        set_outcome(e, OUT_FAIL, "failed", NULL);
    }
}

/* 1 when type is in the comma-separated list. */
static int listed(const char *list, const char *type)
{
    size_t n = strlen(type);

    for (const char *p = list; p != NULL && *p; p = strchr(p, ',') ? strchr(p, ',') + 1 : NULL) {
        if (strncmp(p, type, n) == 0 && (p[n] == ',' || p[n] == '\0'))
            return 1;
    }
    return 0;
}

static void on_chaos_timer(uv_timer_t *t)
{
    struct stream_consumer *sc = t->data;

    stream_consumer_done(&sc->done, 0);
}

/* The handler, unless fault injection says otherwise. */
static int call_handler(struct stream_consumer *sc)
{
    const char *type = sc->msg.type;

    if (listed(sc->chaos_fail_types, type))
        return -EIO;
    if (sc->chaos_state == 0 && sc->chaos_delay_ms > 0 && listed(sc->chaos_delay_types, type) &&
        sc->msg.deliveries == 1) {
        sc->chaos_state = 1;
        uv_timer_start(&sc->chaos, on_chaos_timer, sc->chaos_delay_ms, 0);
        return STREAM_CONSUMER_ASYNC;
    }
    return sc->on_msg(&sc->msg, sc->data);
}

/* Decides e inside the open transaction. */
static void handle_entry(struct stream_consumer *sc, struct entry *e)
{
    char err[STREAMS_MAX_ERR + 32], why[STREAMS_MAX_ERR];
    int rc;

    if (!e->parsed) {
        rc = envelope_parse(sc->stream, e->entry_id, e->fields, e->nfields, &e->env, why,
                            sizeof(why));
        if (rc < 0) {
            snprintf(err, sizeof(err), "malformed: %s", why);
            set_outcome(e, OUT_DLQ, "malformed", err);
            return;
        }
        e->parsed = 1;
    }
    if (e->deliveries > sc->cfg.max_deliveries) {
        snprintf(err, sizeof(err), "gave up after %u deliveries", e->deliveries - 1);
        set_outcome(e, OUT_DLQ, "dead_lettered", err);
        return;
    }
    if (seen_before(sc, e->env.id)) {
        set_outcome(e, OUT_ACK, "duplicate", NULL);
        return;
    }
    if (step_done(sc->save_st) < 0) {
        set_outcome(e, OUT_FAIL, "failed", NULL);
        return;
    }
    memset(&sc->msg, 0, sizeof(sc->msg));
    msg_fill(sc, e, &sc->msg);
    sc->chaos_state = 0;
    settle(sc, e, call_handler(sc));
}

/* ---------------------------------------------------------------------------
 * Acknowledging: XACK for settled entries, MULTI { XADD dlq, XACK } for
 * dead letters, both after the commit
 * ------------------------------------------------------------------------- */

static void dead_letter(struct stream_consumer *sc, struct entry *e)
{
    const char *argv[MAX_ARGS];
    size_t lens[MAX_ARGS];
    char deliveries[16];
    const char *multi = "MULTI", *exec = "EXEC";
    const char *ack[] = {"XACK", sc->stream, sc->group, e->entry_id};
    int n = 0;

    snprintf(deliveries, sizeof(deliveries), "%u", e->deliveries);
    argv[n] = "XADD", lens[n++] = 4;
    argv[n] = sc->dlq, lens[n++] = strlen(sc->dlq);
    argv[n] = "*", lens[n++] = 1;
    for (size_t i = 0; i < e->nfields && n + 8 < MAX_ARGS; i++) {
        argv[n] = e->fields[i].name, lens[n++] = e->fields[i].name_len;
        argv[n] = e->fields[i].value, lens[n++] = e->fields[i].value_len;
    }
    argv[n] = "error", lens[n++] = 5;
    argv[n] = e->error ? e->error : "unknown", lens[n] = strlen(argv[n]), n++;
    argv[n] = "group", lens[n++] = 5;
    argv[n] = sc->group, lens[n++] = strlen(sc->group);
    argv[n] = "deliveries", lens[n++] = 10;
    argv[n] = deliveries, lens[n++] = strlen(deliveries);
    log_warn("consumer %s: entry %s dead-lettered to %s: %s", sc->stream, e->entry_id, sc->dlq,
             e->error ? e->error : "unknown");
    /* Nothing else is sent between these four on this connection: one
     * thread, one call sequence. A loss midway leaves the entry pending. */
    if (redis_command(sc->cmd, NULL, NULL, 1, &multi, NULL) < 0 ||
        redis_command(sc->cmd, NULL, NULL, n, argv, lens) < 0 ||
        redis_command(sc->cmd, NULL, NULL, 4, ack, NULL) < 0 ||
        redis_command(sc->cmd, NULL, NULL, 1, &exec, NULL) < 0)
        log_warn("consumer %s: could not dead-letter %s now; it stays pending", sc->stream,
                 e->entry_id);
}

/* Acks and dead-letters entries [from, to) that are settled. */
static void acknowledge(struct stream_consumer *sc, size_t from, size_t to)
{
    const char *argv[MAX_ARGS];
    int n = 3;

    argv[0] = "XACK";
    argv[1] = sc->stream;
    argv[2] = sc->group;
    for (size_t i = from; i < to; i++) {
        struct entry *e = &sc->batch[i];

        count_event(sc, e->parsed ? e->env.type : "-", e->result ? e->result : "ok");
        if (e->outcome == OUT_DLQ)
            dead_letter(sc, e);
        else if (e->outcome == OUT_ACK && n < MAX_ARGS)
            argv[n++] = e->entry_id;
    }
    if (n > 3 && redis_command(sc->cmd, NULL, NULL, n, argv, NULL) < 0)
        log_warn("consumer %s: XACK not sent (Redis down); the entries will be redelivered and "
                 "recognised as duplicates",
                 sc->stream);
}

static void on_retry_held(uv_timer_t *t)
{
    struct stream_consumer *sc = t->data;

    if (sc->closing) {
        batch_free(sc); /* still pending in Redis: redelivered after a restart */
        sc->state = SC_WAITING;
        maybe_close(sc);
        return;
    }
    process(sc);
}

/* e failed. A dependency that is down (-EAGAIN) is no fault of the entry:
 * the batch is kept in hand (leased, delivery count unchanged) and e is
 * retried after a backoff, never dead-lettered. Any other failure gives the
 * batch back to the pending list and re-reads it after a backoff. */
static void hold_or_back_off(struct stream_consumer *sc, struct entry *e)
{
    count_event(sc, e->parsed ? e->env.type : "-", e->outcome == OUT_RETRY ? "retry" : "failed");
    if (e->outcome != OUT_RETRY || sc->closing) {
        batch_free(sc);
        back_off(sc);
        return;
    }
    e->outcome = OUT_TODO;
    sc->backoff_ms = sc->backoff_ms ? sc->backoff_ms * 2 : BACKOFF_MIN_MS;
    if (sc->backoff_ms > BACKOFF_MAX_MS)
        sc->backoff_ms = BACKOFF_MAX_MS;
    sc->state = SC_HOLDING;
    uv_timer_start(&sc->retry, on_retry_held,
                   sc->backoff_ms / 2 + (unsigned)random() % (sc->backoff_ms / 2 + 1), 0);
}

/* Runs the batch from sc->next until it is done, an entry fails, or an
 * asynchronous handler takes one. */
static void process(struct stream_consumer *sc)
{
    size_t i = sc->next;
    int failed = 0, async = 0;

    if (store_begin(sc->store) < 0) {
        batch_free(sc);
        back_off(sc);
        return;
    }
    for (; i < sc->n && !failed && !async; i++) {
        struct entry *e = &sc->batch[i];

        if (e->outcome == OUT_TODO)
            handle_entry(sc, e);
        failed = e->outcome == OUT_FAIL || e->outcome == OUT_RETRY;
        async = e->outcome == OUT_ASYNC;
    }
    if (store_commit(sc->store) < 0) {
        log_error("consumer %s: commit failed; the batch stays pending", sc->stream);
        batch_free(sc);
        back_off(sc);
        return;
    }
    if (failed || async)
        i--; /* the entry that stopped us is not settled */
    acknowledge(sc, sc->next, i);
    sc->next = i;
    if (async) {
        sc->state = SC_ASYNC;
        return;
    }
    if (failed) {
        hold_or_back_off(sc, &sc->batch[i]);
        return;
    }
    batch_free(sc);
    sc->backoff_ms = 0;
    sc->state = SC_WAITING;
    if (sc->closing)
        maybe_close(sc);
    else
        read_next(sc);
}

/* An asynchronous entry failed outside any transaction. */
static void settle_failed_async(struct stream_consumer *sc, struct entry *e, int rc)
{
    char why[128];

    if (rc != -EAGAIN && e->deliveries >= sc->cfg.max_deliveries) {
        snprintf(why, sizeof(why), "handler failed on delivery %u of %u: %s", e->deliveries,
                 sc->cfg.max_deliveries, strerror(-rc));
        set_outcome(e, OUT_DLQ, "dead_lettered", why);
        acknowledge(sc, sc->next, sc->next + 1);
        sc->next++;
        process(sc);
        return;
    }
    log_warn("consumer %s: %s %s failed (delivery %u of %u): %s; it stays pending", sc->stream,
             e->env.type, e->entry_id, e->deliveries, sc->cfg.max_deliveries, strerror(-rc));
    e->outcome = rc == -EAGAIN ? OUT_RETRY : OUT_FAIL;
    hold_or_back_off(sc, e);
}

void stream_consumer_done(struct stream_done *done, int rc)
{
    struct stream_consumer *sc = done->sc;
    struct entry *e = &sc->batch[sc->next];

    sc->state = SC_WAITING;
    e->outcome = OUT_TODO;
    if (rc < 0 || store_begin(sc->store) < 0) {
        settle_failed_async(sc, e, rc < 0 ? rc : -EIO);
        return;
    }
    if (step_done(sc->save_st) < 0) {
        store_rollback(sc->store);
        settle_failed_async(sc, e, -EIO);
        return;
    }
    /* after a fault-injected delay the handler runs for the first time */
    sc->msg.resumed = sc->chaos_state != 1;
    if (sc->chaos_state == 1)
        sc->chaos_state = 2;
    settle(sc, e, call_handler(sc));
    if (store_commit(sc->store) < 0) {
        e->outcome = OUT_FAIL;
    }
    if (e->outcome == OUT_ASYNC) {
        sc->state = SC_ASYNC;
        return;
    }
    if (e->outcome == OUT_FAIL || e->outcome == OUT_RETRY) {
        hold_or_back_off(sc, e);
        return;
    }
    acknowledge(sc, sc->next, sc->next + 1);
    sc->next++;
    process(sc);
}

/* ---------------------------------------------------------------------------
 * Upkeep: take over dead consumers' entries, keep ours leased, stats, prune
 * ------------------------------------------------------------------------- */

static void on_autoclaim(struct redis *r, struct redisReply *reply, void *data)
{
    struct stream_consumer *sc = data;
    const redisReply *ids, *gone;

    (void)r;
    sc->cmd_inflight--;
    if (sc->closing) {
        maybe_close(sc);
        return;
    }
    if (reply == NULL || reply->type != REDIS_REPLY_ARRAY || reply->elements < 2 ||
        reply->element[0]->type != REDIS_REPLY_STRING) {
        if (reply != NULL && reply->type == REDIS_REPLY_ERROR &&
            strncmp(reply->str, "NOGROUP", 7) != 0)
            log_warn("consumer %s: XAUTOCLAIM failed: %s", sc->stream, reply->str);
        return;
    }
    snprintf(sc->claim_cursor, sizeof(sc->claim_cursor), "%s", reply->element[0]->str);
    ids = reply->element[1];
    if (ids->type == REDIS_REPLY_ARRAY && ids->elements > 0) {
        log_info("consumer %s: took over %zu idle pending entries", sc->stream, ids->elements);
        sc->need_history = 1;
    }
    gone = reply->elements > 2 ? reply->element[2] : NULL;
    if (gone != NULL && gone->type == REDIS_REPLY_ARRAY && gone->elements > 0) {
        const char *argv[MAX_ARGS] = {"XACK", sc->stream, sc->group};
        int n = 3;

        for (size_t i = 0; i < gone->elements && n < MAX_ARGS; i++) {
            if (gone->element[i]->type == REDIS_REPLY_STRING)
                argv[n++] = gone->element[i]->str;
            count_event(sc, "-", "dangling");
        }
        if (redis_command(sc->cmd, NULL, NULL, n, argv, NULL) < 0)
            log_debug("consumer %s: dangling ids not acked now", sc->stream);
    }
}

/* Refreshes the idle time of the entries in hand, so that nobody takes over
 * the entries of a slow (not a dead) consumer. */
static void refresh_lease(struct stream_consumer *sc)
{
    const char *argv[MAX_ARGS] = {"XCLAIM", sc->stream, sc->group, sc->consumer, "0"};
    int n = 5;

    if (sc->batch == NULL)
        return;
    for (size_t i = sc->next; i < sc->n && n < MAX_ARGS - 1; i++)
        argv[n++] = sc->batch[i].entry_id;
    argv[n++] = "JUSTID";
    if (n > 6 && redis_command(sc->cmd, NULL, NULL, n, argv, NULL) < 0)
        log_debug("consumer %s: lease not refreshed now", sc->stream);
}

static void on_claim_timer(uv_timer_t *t)
{
    struct stream_consumer *sc = t->data;
    char idle[16], count[16];
    const char *argv[] = {"XAUTOCLAIM",     sc->stream, sc->group, sc->consumer, idle,
                          sc->claim_cursor, "COUNT",    count,     "JUSTID"};

    if (sc->closing || !redis_is_up(sc->cmd))
        return;
    refresh_lease(sc);
    snprintf(idle, sizeof(idle), "%u", sc->cfg.reclaim_idle_ms);
    snprintf(count, sizeof(count), "%u", sc->cfg.batch);
    if (cmd_send(sc, on_autoclaim, 9, argv, NULL) < 0)
        log_debug("consumer %s: XAUTOCLAIM not sent now", sc->stream);
}

static const redisReply *field_of(const redisReply *map, const char *name)
{
    for (size_t i = 0; i + 1 < map->elements; i += 2) {
        if (map->element[i]->type == REDIS_REPLY_STRING && strcmp(map->element[i]->str, name) == 0)
            return map->element[i + 1];
    }
    return NULL;
}

static void on_groups(struct redis *r, struct redisReply *reply, void *data)
{
    struct stream_consumer *sc = data;

    (void)r;
    sc->cmd_inflight--;
    if (sc->closing) {
        maybe_close(sc);
        return;
    }
    if (reply == NULL || reply->type != REDIS_REPLY_ARRAY)
        return;
    for (size_t i = 0; i < reply->elements; i++) {
        const redisReply *g = reply->element[i], *name, *pending, *lag;

        if (g->type != REDIS_REPLY_ARRAY || (name = field_of(g, "name")) == NULL ||
            name->type != REDIS_REPLY_STRING || strcmp(name->str, sc->group) != 0)
            continue;
        pending = field_of(g, "pending");
        lag = field_of(g, "lag");
        if (pending != NULL && pending->type == REDIS_REPLY_INTEGER)
            sc->pending = (double)pending->integer;
        if (lag != NULL && lag->type == REDIS_REPLY_INTEGER)
            sc->lag = (double)lag->integer;
    }
}

static void prune_inbox(struct stream_consumer *sc)
{
    if (store_in_txn(sc->store))
        return;
    sqlite3_bind_text(sc->prune_st, 1, sc->stream, -1, SQLITE_STATIC);
    sqlite3_bind_int64(sc->prune_st, 2, clock_now_ms() - (int64_t)sc->cfg.inbox_retention_ms);
    sqlite3_bind_int(sc->prune_st, 3, PRUNE_BATCH);
    if (step_done(sc->prune_st) < 0)
        log_warn("consumer %s: inbox pruning failed: %s", sc->stream, store_errmsg(sc->store));
}

static void on_stats_timer(uv_timer_t *t)
{
    struct stream_consumer *sc = t->data;
    const char *argv[] = {"XINFO", "GROUPS", sc->stream};
    uint64_t now = uv_now(t->loop);

    if (sc->closing)
        return;
    if (now - sc->last_prune >= PRUNE_MS) {
        sc->last_prune = now;
        prune_inbox(sc);
    }
    if (redis_is_up(sc->cmd) && cmd_send(sc, on_groups, 3, argv, NULL) < 0)
        log_debug("consumer %s: XINFO not sent now", sc->stream);
}

static double gauge_pending(void *data)
{
    return ((struct stream_consumer *)data)->pending;
}

static double gauge_lag(void *data)
{
    return ((struct stream_consumer *)data)->lag;
}

/* ---------------------------------------------------------------------------
 * Life cycle
 * ------------------------------------------------------------------------- */

static int prepare_all(struct stream_consumer *sc)
{
    struct store *st = sc->store;
    int rc;

    if (sqlite3_exec(store_db(st), inbox_schema, NULL, NULL, NULL) != SQLITE_OK) {
        log_error("consumer: cannot create the inbox table: %s", store_errmsg(st));
        return -EIO;
    }
    if ((rc = store_prepare(st, "SELECT 1 FROM inbox WHERE event_id = ?", &sc->seen_st)) < 0 ||
        (rc =
             store_prepare(st, "INSERT INTO inbox(event_id, stream, processed_at) VALUES (?, ?, ?)",
                           &sc->remember_st)) < 0 ||
        (rc = store_prepare(st,
                            "DELETE FROM inbox WHERE event_id IN (SELECT event_id FROM inbox "
                            "WHERE stream = ? AND processed_at < ? LIMIT ?)",
                            &sc->prune_st)) < 0 ||
        (rc = store_prepare(st, "SAVEPOINT entry", &sc->save_st)) < 0 ||
        (rc = store_prepare(st, "RELEASE entry", &sc->release_st)) < 0 ||
        (rc = store_prepare(st, "ROLLBACK TO entry", &sc->undo_st)) < 0)
        return rc;
    return 0;
}

static int register_metrics(struct stream_consumer *sc)
{
    char labels[96];

    snprintf(labels, sizeof(labels), "stream=\"%s\"", sc->stream);
    if (metrics_gauge(sc->svc->metrics, "stream_pending",
                      "Entries delivered to the group and not yet acknowledged.", labels,
                      gauge_pending, sc) < 0 ||
        metrics_gauge(sc->svc->metrics, "stream_lag",
                      "Entries in the stream not yet delivered to the group.", labels, gauge_lag,
                      sc) < 0)
        return -ENOMEM;
    return 0;
}

static int read_chaos(struct stream_consumer *sc)
{
    char err[CONFIG_ERR_MAX];
    unsigned long delay;

    if (config_str("CHAOS_FAIL_TYPES", "", 0, &sc->chaos_fail_types, err, sizeof(err)) < 0 ||
        config_str("CHAOS_DELAY_TYPES", "", 0, &sc->chaos_delay_types, err, sizeof(err)) < 0 ||
        config_uint("CHAOS_DELAY_MS", 0, 0, 3600000, &delay, err, sizeof(err)) < 0) {
        log_error("consumer %s: %s", sc->stream, err);
        return -EINVAL;
    }
    sc->chaos_delay_ms = (unsigned)delay;
    if (sc->chaos_fail_types[0] || (sc->chaos_delay_types[0] && delay > 0))
        log_warn("consumer %s: fault injection on: failing [%s], delaying [%s] by %lu ms",
                 sc->stream, sc->chaos_fail_types, sc->chaos_delay_types, delay);
    return 0;
}

static int open_blocking(struct stream_consumer *sc)
{
    struct redis_config rc = {
        .url = sc->svc->cfg.redis_url,
        .name = sc->stream,
        .log_scope = sc->svc->module->name,
        .command_timeout_ms = sc->cfg.block_ms + 10000,
    };
    char err[CONFIG_ERR_MAX];

    if (redis_new(sc->svc->loop, &rc, &sc->blk, err, sizeof(err)) < 0)
        return -EINVAL;
    return redis_listen(sc->blk, on_blk_state, sc);
}

int stream_consumer_new(struct service *svc, const struct stream_consumer_config *cfg,
                        stream_consumer_msg_cb on_msg, void *data, struct stream_consumer **out)
{
    struct stream_consumer *sc = calloc(1, sizeof(*sc));
    int rc;

    if (sc == NULL)
        return -ENOMEM;
    sc->svc = svc;
    sc->store = svc->store;
    sc->cmd = svc->redis;
    sc->cfg = *cfg;
    sc->on_msg = on_msg;
    sc->data = data;
    sc->done.sc = sc;
    if (snprintf(sc->stream, sizeof(sc->stream), "%s", cfg->stream) >= (int)sizeof(sc->stream) ||
        streams_dlq_name(sc->stream, sc->dlq, sizeof(sc->dlq)) < 0 || sc->store == NULL ||
        cfg->batch == 0 || cfg->batch > 1024 || cfg->max_deliveries == 0) {
        free(sc);
        return -EINVAL;
    }
    snprintf(sc->group, sizeof(sc->group), "%s", svc->cfg.service);
    snprintf(sc->consumer, sizeof(sc->consumer), "%s", svc->cfg.consumer_name);
    snprintf(sc->claim_cursor, sizeof(sc->claim_cursor), "0-0");
    sc->cfg.stream = sc->stream;
    if ((rc = read_chaos(sc)) < 0 || (rc = prepare_all(sc)) < 0 ||
        (rc = register_metrics(sc)) < 0 || (rc = open_blocking(sc)) < 0) {
        free(sc);
        return rc;
    }
    uv_timer_init(svc->loop, &sc->retry);
    uv_timer_init(svc->loop, &sc->claim);
    uv_timer_init(svc->loop, &sc->stats);
    uv_timer_init(svc->loop, &sc->chaos);
    sc->retry.data = sc->claim.data = sc->stats.data = sc->chaos.data = sc;
    sc->state = SC_WAITING;
    *out = sc;
    return 0;
}

static void consumer_start(struct stream_consumer *sc)
{
    unsigned every = sc->cfg.reclaim_idle_ms / 3;

    if (every < 50)
        every = 50;
    sc->last_prune = uv_now(sc->svc->loop);
    uv_timer_start(&sc->claim, on_claim_timer, every, every);
    uv_timer_start(&sc->stats, on_stats_timer, STATS_MS, STATS_MS);
    redis_start(sc->blk);
}

/* One more of our five closes (four timers, the Redis connection) is done. */
static void close_step(struct stream_consumer *sc)
{
    stream_consumer_closed_cb cb;
    void *data;

    if (--sc->pending_closes > 0)
        return;
    cb = sc->closed_cb;
    data = sc->closed_data;
    metrics_gauge_detach(sc->svc->metrics, sc);
    free(sc);
    if (cb)
        cb(data);
}

static void on_handle_closed(uv_handle_t *h)
{
    close_step(h->data);
}

static void on_blk_closed(void *data)
{
    close_step(data);
}

/* Closes once no batch is in hand and no reply we wait for is out. */
static void maybe_close(struct stream_consumer *sc)
{
    if (!sc->closing || sc->close_started || sc->batch != NULL || sc->cmd_inflight > 0 ||
        sc->state == SC_COUNTING || sc->state == SC_ASYNC)
        return;
    sc->close_started = 1;
    sc->pending_closes = 5;
    uv_close((uv_handle_t *)&sc->chaos, on_handle_closed);
    uv_close((uv_handle_t *)&sc->retry, on_handle_closed);
    uv_close((uv_handle_t *)&sc->claim, on_handle_closed);
    uv_close((uv_handle_t *)&sc->stats, on_handle_closed);
    /* the handle count above includes the Redis connection: its
     * outstanding XREADGROUP gets a NULL reply, which on_read ignores */
    redis_close(sc->blk, on_blk_closed, (void *)sc);
}

void stream_consumer_close(struct stream_consumer *sc, stream_consumer_closed_cb closed_cb,
                           void *data)
{
    sc->closing = 1;
    sc->closed_cb = closed_cb;
    sc->closed_data = data;
    uv_timer_stop(&sc->retry);
    uv_timer_stop(&sc->claim);
    uv_timer_stop(&sc->stats);
    if (sc->state == SC_HOLDING || (sc->state == SC_ASYNC && sc->chaos_state == 1)) {
        /* nothing of ours waits on these: they stay pending in Redis and
         * are redelivered after a restart */
        uv_timer_stop(&sc->chaos);
        batch_free(sc);
        sc->state = SC_WAITING;
    }
    maybe_close(sc);
}

/* ---------------------------------------------------------------------------
 * Wiring into the service
 * ------------------------------------------------------------------------- */

static void on_cmd_state(struct redis *r, int up, void *data);

/* What an attached consumer keeps for the service's stop. */
struct attachment {
    struct stream_consumer *sc;
    struct service *svc;
    service_stop_done_cb done;
    stream_consumer_release_cb release;
    void *data;
};

static void on_attached_closed(void *data)
{
    struct attachment *at = data;
    service_stop_done_cb done = at->done;
    struct service *svc = at->svc;

    if (at->release)
        at->release(at->data);
    free(at);
    done(svc);
}

static void on_service_stop(struct service *svc, void *data, service_stop_done_cb done)
{
    struct attachment *at = data;

    redis_unlisten(svc->redis, on_cmd_state, at->sc);
    at->done = done;
    stream_consumer_close(at->sc, on_attached_closed, at);
}

/* The consumer starts when the command connection first comes up (so the
 * service's readiness and the consumer's start line up). */
static void on_cmd_state(struct redis *r, int up, void *data)
{
    struct stream_consumer *sc = data;

    (void)r;
    if (up && !sc->closing && !uv_is_active((uv_handle_t *)&sc->claim))
        consumer_start(sc);
}

struct stream_consumer *stream_consumer_attach(struct service *svc, const char *stream,
                                               stream_consumer_msg_cb on_msg, void *data,
                                               stream_consumer_release_cb release)
{
    const struct config *cfg = &svc->cfg;
    struct stream_consumer_config cc = {
        .stream = stream,
        .batch = cfg->consumer_batch,
        .block_ms = cfg->consumer_block_ms,
        .reclaim_idle_ms = cfg->reclaim_idle_ms,
        .max_deliveries = cfg->max_deliveries,
        .inbox_retention_ms = cfg->inbox_retention_ms,
    };
    struct attachment *at = calloc(1, sizeof(*at));
    struct stream_consumer *sc;
    int rc = at ? stream_consumer_new(svc, &cc, on_msg, data, &sc) : -ENOMEM;

    if (rc < 0)
        service_fatal(svc, "cannot consume %s: %s", stream, strerror(-rc));
    at->sc = sc;
    at->svc = svc;
    at->release = release;
    at->data = data;
    if (redis_listen(svc->redis, on_cmd_state, sc) < 0)
        service_fatal(svc, "too many listeners on the Redis connection");
    service_on_stop(svc, on_service_stop, at);
    return sc;
}
