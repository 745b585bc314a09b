/* stream_consumer.c -- a consumer group member. See stream_consumer.h.
 *
 * The read cycle, on the consumer's own connection (blk):
 *
 *   ensure group --> read history (ID 0 .. own pending) --> read new (>)
 *   (created at the       |  (delivery counts from XPENDING)      |
 *    position settled     v                                       v
 *    last)  ^          process the batch: one transaction (per
 *           |          SC_CHUNK entries), a savepoint per
 *           |          entry; after the commit XACK, and dead letters (XADD
 *        NOGROUP       and XACK in one script). A batch is never given back:
 *                      a failed entry, a store that cannot write, a
 *                      dependency that is down, a dead letter Redis refused
 *                      -- each holds the batch in hand (SC_HOLDING) and
 *                      retries after a capped, jittered backoff.
 *
 * While a batch is in hand blk carries no blocking read, so every command
 * about the batch goes there (XPENDING, XACK, the lease and dead-letter
 * scripts): consuming does not wait for the service's command connection,
 * which carries only the periodic XAUTOCLAIM and XINFO.
 *
 * Counting failures. Redis counts a delivery at every read of a pending
 * entry -- after a crash, a takeover, a reconnect -- so its count measures
 * restarts as much as failures. MAX_DELIVERIES counts handler failures,
 * recorded in the service's database (stream_ledger) in the batch's
 * transaction; Redis' count is only a crash-loop guard (max_deliveries_guard).
 * A failure of the store itself (store_check_fault: disk full, a lock held
 * elsewhere, an I/O error) counts for nothing: the transaction is rolled
 * back, the entries run again after a backoff, and the store reports itself
 * unwritable to readiness meanwhile.
 *
 * Ownership. Entries in hand are leased: every reclaim_idle_ms / 3 a script
 * claims (XCLAIM JUSTID: idle reset, count unchanged) those still pending
 * for this consumer, and only those; the others are marked taken over. The
 * same check runs before a resumed asynchronous handler applies anything and
 * whenever the lease may have lapsed (the process was stopped), and dead
 * letters are written only for entries still ours. What was taken over is
 * dropped, neither applied nor acked.
 *
 * State lives in sc->state; every callback checks sc->closing first. The
 * batch in hand is owned here (entries are copied out of the hiredis reply).
 * Commands whose replies we wait for are counted in inflight (on either
 * connection), and sc is freed only when none is left. */
#include <ripple/stream_consumer.h>

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <hiredis/hiredis.h>
#include <jansson.h>
#include <sqlite3.h>
#include <uv.h>

#include <ripple/clock.h>
#include <ripple/ids.h>
#include <ripple/log.h>
#include <ripple/metrics.h>
#include <ripple/redis.h>
#include <ripple/service.h>
#include <ripple/store.h>
#include "stream_ledger.h"
#include <ripple/streams.h>
#include <ripple/trace.h>

#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 5000
#define STATS_MS 5000
#define PRUNE_MS 60000 /* inbox pruning at most this far apart */
#define PRUNE_BATCH 500
/* Entries run in one transaction at most; the next chunk's transaction
 * begins right after, in the same loop iteration (and group commit). Each
 * entry's savepoint sits inside the transaction's, and releasing a nested
 * savepoint walks SQLite's in-memory sub-journal (a list of 1 KiB chunks)
 * from its start: a transaction of 512 entries made that walk quadratic,
 * 16% of orders' time in the saga bench. Each entry's walk is as long as
 * what the entries before it in the transaction changed; a chunk's end is
 * cheap (an UPDATE and a savepoint released into the group), so chunks are
 * short: 64 -> 16 took payments from 24.2 to 23.3 us per credit event. */
#define SC_CHUNK 16
/* Arguments of one command: a dead letter's fields, or the ids of a whole
 * batch (XACK, the lease script) after the command's own head. */
#define MAX_ARGS (CONFIG_CONSUMER_BATCH_MAX + 8)
#define SC_COUNTER_SLOTS 16 /* stream_events_total series kept at hand */

/* KEYS[1] stream; ARGV[1] group, ARGV[2] consumer, ARGV[3..] entry ids.
 * Claims (idle reset, delivery count unchanged) the ids still pending for
 * the consumer, and only those; returns them, in order. */
static const char lease_lua[] =
    "local mine = {}\n"
    "for i = 3, #ARGV do\n"
    "  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)\n"
    "  if p[1] and p[1][2] == ARGV[2] then mine[#mine + 1] = ARGV[i] end\n"
    "end\n"
    "if #mine > 0 then\n"
    "  local a = {'XCLAIM', KEYS[1], ARGV[1], ARGV[2], '0'}\n"
    "  for i = 1, #mine do a[#a + 1] = mine[i] end\n"
    "  a[#a + 1] = 'JUSTID'\n"
    "  redis.call(unpack(a))\n"
    "end\n"
    "return mine\n";

/* KEYS[1] stream, KEYS[2] its dead-letter stream; ARGV[1] group, ARGV[2]
 * consumer, ARGV[3] entry id, ARGV[4..] the dead letter's fields. While the
 * entry is pending for the consumer, writes the dead letter, then acks: 1.
 * 0 when it is not ours (taken over, acked). A refused XADD (WRONGTYPE, OOM)
 * is an error reply, and nothing was written or acked. */
static const char dead_letter_lua[] =
    "local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)\n"
    "if not p[1] or p[1][2] ~= ARGV[2] then return 0 end\n"
    "redis.call('XADD', KEYS[2], '*', unpack(ARGV, 4))\n"
    "redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])\n"
    "return 1\n";

enum sc_state {
    SC_WAITING,  /* for the connection, or for a backoff timer */
    SC_GROUP,    /* XGROUP CREATE in flight */
    SC_READING,  /* XREADGROUP in flight */
    SC_COUNTING, /* XPENDING (delivery counts of a history batch) in flight */
    SC_ASYNC,    /* an asynchronous handler holds the entry in hand */
    SC_HOLDING,  /* the batch waits for a backoff timer to retry */
    SC_CHECKING, /* the lease script confirms what is ours before going on */
    SC_SETTLING, /* the batch is done; its dead letters are in flight */
    SC_DURABLE,  /* the batch's writes wait for the store's group COMMIT */
};

enum outcome { OUT_TODO, OUT_ACK, OUT_DLQ, OUT_FAIL, OUT_ASYNC, OUT_RETRY, OUT_LOST };

/* Where an entry's handler stands. */
enum phase {
    PH_FRESH,        /* the handler starts from the beginning */
    PH_RESUME,       /* an asynchronous step finished: the handler applies */
    PH_ASYNC_FAILED, /* an asynchronous step failed: record the failure */
};

enum dlq_state { DLQ_NONE, DLQ_SENT, DLQ_FAILED, DLQ_DONE };

struct entry {
    void *mem; /* one block: the fields array, their strings, the id */
    char *entry_id;
    struct stream_field *fields;
    size_t nfields;
    unsigned deliveries; /* Redis' delivery count */
    unsigned failures;   /* handler failures recorded in the ledger */
    enum outcome outcome;
    enum phase phase;
    int async_rc;       /* PH_ASYNC_FAILED: what the handler reported */
    const char *result; /* metric label */
    char *error;        /* the dead letter's reason */
    struct envelope env;
    const struct stream_type *decl;  /* the module's declaration of its type; borrowed */
    char span[TRACE_PARENT_LEN + 1]; /* the trace context of its handling, made once */
    int parsed;                      /* 1: env holds a reference */
    int dangling;                    /* deleted while pending: ack, nothing to run */
    int lost;                        /* taken over by another consumer: drop */
    enum dlq_state dlq;
    int dlq_logged; /* a failed dead letter is logged once */
};

struct stream_done {
    struct stream_consumer *sc;
};

/* The context of one lease script in flight. */
enum lease_then { LEASE_REFRESH, LEASE_PROCESS };
struct lease_req {
    struct stream_consumer *sc;
    unsigned gen;     /* of the batch it was sent for */
    size_t from, to;  /* the entries it asked about */
    uint64_t sent_at; /* uv_now */
    enum lease_then then;
};

/* The context of one dead letter in flight. */
struct dlq_req {
    struct stream_consumer *sc;
    unsigned gen;
    size_t idx;
};

struct stream_consumer {
    struct service *svc;
    struct store *store;
    struct stream_ledger *ledger;
    struct redis *cmd; /* borrowed: the service's command connection */
    struct redis *blk; /* ours: reads, and everything about the batch in hand */
    struct stream_consumer_config cfg;
    int start_new; /* a group created here starts at "$" (CONSUMER_START) */
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
    unsigned gen;            /* counts batches, for replies that outlive one */
    struct stream_msg msg;   /* of the entry with an async handler */
    struct stream_done done; /* its token */
    uint64_t lease_at;       /* uv_now when the batch's lease was last confirmed */
    int need_confirm;        /* confirm ownership before going on */
    unsigned lease_inflight; /* lease refreshes sent, not answered */
    unsigned dlq_inflight;   /* dead letters sent, not answered */
    int store_failing;       /* a store failure holds the batch */
    int store_fault;         /* set while processing: the store failed */
    size_t durable_upto;     /* SC_DURABLE: the entries [next, durable_upto) wait */
    int early_done;          /* SC_DURABLE: the asynchronous handler answered already */
    int early_rc;            /* ... with this */

    uv_timer_t retry; /* backoff */
    uv_timer_t claim; /* XAUTOCLAIM and lease refresh */
    uv_timer_t stats; /* XINFO, trim detection, inbox pruning */
    uv_timer_t chaos; /* CHAOS_DELAY_MS before a handler */

    /* Fault injection for tests and drills (CHAOS_* settings, off by
     * default): handlers of these types fail, or start after a delay. */
    const char *chaos_fail_types, *chaos_delay_types;
    unsigned chaos_delay_ms;
    int chaos_state; /* of the entry in hand: 0 none, 1 delaying, 2 delay over */
    uint64_t last_prune;
    double pending, lag;
    uint64_t trimmed;  /* entries reported lost to trimming (kept in the ledger) */
    int trim_wait;     /* the start's trim check is out: no ">" read yet */
    int group_created; /* we created the group: a new trim baseline */

    struct {
        char type[STREAMS_MAX_TYPE];
        const char *result; /* a literal: compared by address */
        struct metrics_counter *c;
    } counters[SC_COUNTER_SLOTS];
    struct metrics_counter *trimmed_c, *dlq_failed_c, *store_failed_c;

    struct sqlite3_stmt *save_st, *release_st, *undo_st;

    unsigned inflight; /* replies we wait for, on cmd or blk */
    int closing, close_started;
    unsigned pending_closes;
    stream_consumer_closed_cb closed_cb;
    void *closed_data;
};

static void read_next(struct stream_consumer *sc);
static void process(struct stream_consumer *sc);
static void maybe_close(struct stream_consumer *sc);
static void batch_done(struct stream_consumer *sc);
static void resend_dead_letters(struct stream_consumer *sc);

/* ---------------------------------------------------------------------------
 * Helpers
 * ------------------------------------------------------------------------- */

int stream_msg_uuid(const struct stream_msg *msg, const char *field, char out[IDS_UUID_LEN + 1])
{
    const json_t *v = json_object_get(msg->data, field);

    if (!json_is_string(v) || ids_canonical(json_string_value(v), json_string_length(v), out) < 0)
        return -EINVAL;
    return 0;
}

const char *stream_msg_str(const struct stream_msg *msg, const char *field)
{
    return json_string_value(json_object_get(msg->data, field));
}

long long stream_msg_int(const struct stream_msg *msg, const char *field, long long dflt)
{
    const json_t *v = json_object_get(msg->data, field);

    return json_is_integer(v) ? (long long)json_integer_value(v) : dflt;
}

const char *stream_msg_trace(const struct stream_msg *msg)
{
    return msg->trace != NULL && msg->trace[0] != '\0' ? msg->trace : NULL;
}

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

static const char *entry_type(const struct entry *e)
{
    return e->parsed ? e->env.type : "-";
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
    sc->gen++;
    sc->need_confirm = 0;
    sc->dlq_inflight = 0; /* replies for an old batch are told by gen */
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

/* Sends a command whose reply sc waits for (cb != NULL) on connection r. */
static int send_on(struct stream_consumer *sc, struct redis *r, redis_reply_cb cb, void *data,
                   int argc, const char **argv, const size_t *lens)
{
    int rc = redis_command(r, cb, data, argc, argv, lens);

    if (rc == 0 && cb != NULL)
        sc->inflight++;
    return rc;
}

/* The next backoff delay: doubles from BACKOFF_MIN_MS up to BACKOFF_MAX_MS,
 * jittered over its upper half. */
static unsigned next_backoff(struct stream_consumer *sc)
{
    sc->backoff_ms = sc->backoff_ms ? sc->backoff_ms * 2 : BACKOFF_MIN_MS;
    if (sc->backoff_ms > BACKOFF_MAX_MS)
        sc->backoff_ms = BACKOFF_MAX_MS;
    return sc->backoff_ms / 2 + (unsigned)random() % (sc->backoff_ms / 2 + 1);
}

/* The module this consumer's lines (and its handlers' lines) belong to. */
static void scope(const struct stream_consumer *sc)
{
    if (sc->svc->module != NULL)
        log_scope(sc->svc->module->name);
}

static void on_retry(uv_timer_t *t)
{
    struct stream_consumer *sc = t->data;

    scope(sc);
    if (sc->closing) {
        maybe_close(sc);
        return;
    }
    read_next(sc);
}

/* Waits before the next read after a failed read, XGROUP or XPENDING (no
 * batch in hand). The next read starts with our own pending entries. */
static void back_off(struct stream_consumer *sc)
{
    unsigned delay = next_backoff(sc);

    sc->state = SC_WAITING;
    sc->history = 1;
    snprintf(sc->cursor, sizeof(sc->cursor), "0");
    if (sc->closing) {
        maybe_close(sc);
        return;
    }
    uv_timer_start(&sc->retry, on_retry, delay, 0);
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
    if (kv->type != REDIS_REPLY_ARRAY) {
        e->dangling = 1; /* deleted while pending */
        set_outcome(e, OUT_ACK, "dangling", NULL);
    }
    return 0;
}

/* ---------------------------------------------------------------------------
 * Trimming: entries MAXLEN removed before the group read them (DESIGN §6)
 *
 * XINFO GROUPS' lag is entries-added minus entries-read, and trimming does
 * not lower it: the entries lost to trimming stay in it for good. So lost =
 * lag - (entries still unread), and the entries still unread are at most
 * the stream's length: exactly that while the group is behind the first
 * entry, none once it has read the last. lag - length is therefore a lower
 * bound that is exact when it matters, and lag is exact once caught up.
 * What was reported is kept in the ledger, so each loss counts once.
 * ------------------------------------------------------------------------- */

static const redisReply *field_of(const redisReply *map, const char *name)
{
    if (map == NULL || map->type != REDIS_REPLY_ARRAY)
        return NULL;
    for (size_t i = 0; i + 1 < map->elements; i += 2) {
        if (map->element[i]->type == REDIS_REPLY_STRING && strcmp(map->element[i]->str, name) == 0)
            return map->element[i + 1];
    }
    return NULL;
}

static int int_field(const redisReply *map, const char *name, long long *out)
{
    const redisReply *v = field_of(map, name);

    if (v == NULL || v->type != REDIS_REPLY_INTEGER)
        return -ENOENT;
    *out = v->integer;
    return 0;
}

static const char *str_field(const redisReply *map, const char *name)
{
    const redisReply *v = field_of(map, name);

    return v != NULL && v->type == REDIS_REPLY_STRING ? v->str : NULL;
}

/* Our group's entry of an XINFO GROUPS reply, or NULL. */
static const redisReply *our_group(const struct stream_consumer *sc, const redisReply *groups)
{
    if (groups == NULL || groups->type != REDIS_REPLY_ARRAY)
        return NULL;
    for (size_t i = 0; i < groups->elements; i++) {
        const char *name = str_field(groups->element[i], "name");

        if (name != NULL && strcmp(name, sc->group) == 0)
            return groups->element[i];
    }
    return NULL;
}

static void save_trimmed(struct stream_consumer *sc)
{
    if (store_in_txn(sc->store) || store_begin(sc->store) < 0)
        return;
    if (stream_ledger_set_trimmed(sc->ledger, sc->trimmed) < 0) {
        store_rollback(sc->store);
        return;
    }
    if (store_commit(sc->store) < 0)
        log_debug("consumer %s: trimmed count not saved now", sc->stream);
}

static void report_trimmed(struct stream_consumer *sc, uint64_t lost, const redisReply *info,
                           const redisReply *group)
{
    const char *read_to = str_field(group, "last-delivered-id");
    const redisReply *first = field_of(info, "first-entry");
    const char *first_id = first != NULL && first->type == REDIS_REPLY_ARRAY &&
                                   first->elements > 0 &&
                                   first->element[0]->type == REDIS_REPLY_STRING
                               ? first->element[0]->str
                               : "(none)";

    log_error("consumer %s: %" PRIu64 " entries were trimmed from the stream (MAXLEN) before "
              "group %s read them -- they are lost to this service (the group had read up to "
              "%s, the stream now starts at %s); STREAM_MAXLEN of the writers is too small "
              "for this consumer's outages (see README, Troubleshooting)",
              sc->stream, lost - sc->trimmed, sc->group, read_to ? read_to : "?", first_id);
    if (sc->trimmed_c != NULL)
        metrics_counter_add(sc->trimmed_c, lost - sc->trimmed);
    sc->trimmed = lost;
    save_trimmed(sc);
}

/* info: XINFO STREAM; group: our entry of XINFO GROUPS. Updates the gauges
 * and reports entries lost to trimming. */
static void check_stream(struct stream_consumer *sc, const redisReply *info,
                         const redisReply *group)
{
    long long pending, lag, length, read;
    const char *last = str_field(info, "last-generated-id");
    const char *delivered = str_field(group, "last-delivered-id");
    uint64_t lost;

    if (int_field(group, "pending", &pending) == 0)
        sc->pending = (double)pending;
    if (int_field(group, "lag", &lag) < 0 || int_field(group, "entries-read", &read) < 0 ||
        int_field(info, "length", &length) < 0 || lag < 0)
        return; /* lag unknown (XDEL tombstones, a group made at an arbitrary id) */
    if (sc->group_created) {
        sc->group_created = 0; /* a new group: a new baseline */
        sc->trimmed = 0;
        save_trimmed(sc);
    }
    if (last != NULL && delivered != NULL && strcmp(last, delivered) == 0)
        lost = (uint64_t)lag;
    else
        lost = lag > length ? (uint64_t)(lag - length) : 0;
    if (lost > sc->trimmed)
        report_trimmed(sc, lost, info, group);
    sc->lag = (double)((uint64_t)lag > sc->trimmed ? (uint64_t)lag - sc->trimmed : 0);
}

/* The reply of MULTI; XINFO STREAM; XINFO GROUPS; EXEC. */
static void on_stream_info(struct redis *r, struct redisReply *reply, void *data)
{
    struct stream_consumer *sc = data;

    (void)r;
    sc->inflight--;
    if (sc->closing) {
        maybe_close(sc);
        return;
    }
    if (reply != NULL && reply->type == REDIS_REPLY_ARRAY && reply->elements == 2)
        check_stream(sc, reply->element[0], our_group(sc, reply->element[1]));
    if (sc->trim_wait) {
        sc->trim_wait = 0;
        read_next(sc);
    }
}

/* Asks for the stream's and the group's counters, atomically (MULTI), on
 * the command connection. Returns 0 when the answer will come. */
static int ask_stream_info(struct stream_consumer *sc)
{
    const char *multi = "MULTI", *exec = "EXEC";
    const char *stream[] = {"XINFO", "STREAM", sc->stream};
    const char *groups[] = {"XINFO", "GROUPS", sc->stream};

    if (!redis_is_up(sc->cmd))
        return -ENOTCONN;
    /* one thread, one call sequence: nothing comes between these four */
    if (redis_command(sc->cmd, NULL, NULL, 1, &multi, NULL) < 0)
        return -ENOTCONN;
    if (redis_command(sc->cmd, NULL, NULL, 3, stream, NULL) < 0 ||
        redis_command(sc->cmd, NULL, NULL, 3, groups, NULL) < 0 ||
        send_on(sc, sc->cmd, on_stream_info, sc, 1, &exec, NULL) < 0) {
        const char *discard = "DISCARD"; /* never leave the connection inside MULTI */

        if (redis_command(sc->cmd, NULL, NULL, 1, &discard, NULL) < 0)
            log_debug("consumer %s: DISCARD not sent", sc->stream);
        return -ENOTCONN;
    }
    return 0;
}

/* ---------------------------------------------------------------------------
 * The group
 * ------------------------------------------------------------------------- */

static void on_group(struct redis *r, struct redisReply *reply, void *data)
{
    struct stream_consumer *sc = data;

    (void)r;
    sc->state = SC_WAITING;
    if (sc->closing) {
        maybe_close(sc);
        return;
    }
    if (reply == NULL)
        return; /* the connection's listener restarts us */
    if (reply->type == REDIS_REPLY_ERROR && strncmp(reply->str, "BUSYGROUP", 9) != 0) {
        log_warn("consumer %s: XGROUP CREATE failed: %s", sc->stream, reply->str);
        back_off(sc);
        return;
    }
    if (reply->type != REDIS_REPLY_ERROR)
        sc->group_created = 1;
    sc->history = 1;
    snprintf(sc->cursor, sizeof(sc->cursor), "0");
    /* before the first ">" read moves the group past a gap, see what
     * trimming took */
    sc->trim_wait = ask_stream_info(sc) == 0;
    read_next(sc);
}

/* Creates the group where this service last settled an entry: a group
 * lost with Redis' data does not replay what the inbox may no longer
 * remember. The first time it starts at 0 with ENTRIESREAD 0, so Redis
 * counts the group's reads from the stream's first entry ever, and entries
 * trimmed before the group read them show in its lag (Redis 7). */
static void ensure_group(struct stream_consumer *sc)
{
    char at[STREAM_ID_MAX] = "0";
    const char *argv[] = {"XGROUP", "CREATE",   sc->stream,    sc->group,
                          at,       "MKSTREAM", "ENTRIESREAD", "0"};
    struct stream_id pos;
    int argc = 8;

    if (stream_ledger_position(sc->ledger, &pos) < 0) {
        log_warn("consumer %s: cannot read the position settled last: %s; a new group starts at 0",
                 sc->stream, store_errmsg(sc->store));
    } else if (pos.ms != 0 || pos.seq != 0) {
        stream_id_format(&pos, at, sizeof(at));
        argc = 6; /* how many entries lie before it is not known here */
    } else if (sc->start_new) {
        memcpy(at, "$", 2); /* CONSUMER_START=$: a service added to a live system */
        argc = 6;           /* Redis counts what came before as read */
    }
    sc->state = SC_GROUP;
    /* not counted in inflight (nor the reads): closing does not wait for
     * them, redis_close answers them NULL before on_blk_closed */
    if (redis_command(sc->blk, on_group, sc, argc, argv, NULL) < 0)
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
    sc->gen++;
    sc->lease_at = uv_now(sc->svc->loop); /* delivered just now: idle 0 */
    for (size_t i = 0; i < entries->elements && rc == 0; i++) {
        rc = entry_copy(&sc->batch[i], entries->element[i]);
        if (rc == 0)
            sc->n++;
    }
    return rc;
}

/* Asks for the delivery counts of a history batch (XREADGROUP with an id
 * does not report them), on blk: it is idle, and it is up. */
static void fetch_counts(struct stream_consumer *sc)
{
    char count[16];
    const char *argv[] = {
        "XPENDING", sc->stream,  sc->group, sc->batch[0].entry_id, sc->batch[sc->n - 1].entry_id,
        count,      sc->consumer};

    snprintf(count, sizeof(count), "%zu", sc->n);
    sc->state = SC_COUNTING;
    if (send_on(sc, sc->blk, on_pending_counts, sc, 7, argv, NULL) < 0) {
        batch_free(sc);
        back_off(sc);
    }
}

static void on_pending_counts(struct redis *r, struct redisReply *reply, void *data)
{
    struct stream_consumer *sc = data;

    (void)r;
    sc->inflight--;
    if (sc->closing || reply == NULL || reply->type != REDIS_REPLY_ARRAY) {
        if (reply != NULL && reply->type == REDIS_REPLY_ERROR)
            log_warn("consumer %s: XPENDING failed: %s", sc->stream, reply->str);
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
            p->element[0]->type != REDIS_REPLY_STRING || p->element[3]->type != REDIS_REPLY_INTEGER)
            continue;
        for (size_t j = 0; j < sc->n; j++) {
            if (strcmp(sc->batch[j].entry_id, p->element[0]->str) == 0)
                sc->batch[j].deliveries = (unsigned)p->element[3]->integer;
        }
    }
    process(sc);
}

/* The entries of an XREADGROUP reply [[stream, [entries]]], or NULL. */
static const redisReply *read_entries(const redisReply *reply)
{
    const redisReply *s = reply->element[0];

    if (s->type != REDIS_REPLY_ARRAY || s->elements != 2 ||
        s->element[1]->type != REDIS_REPLY_ARRAY)
        return NULL;
    return s->element[1];
}

static void on_read_error(struct stream_consumer *sc, const char *err)
{
    if (strncmp(err, "NOGROUP", 7) == 0) {
        log_warn("consumer %s: the group is gone (%s); recreating it", sc->stream, err);
        ensure_group(sc);
        return;
    }
    log_warn("consumer %s: XREADGROUP failed: %s", sc->stream, err);
    back_off(sc);
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
        on_read_error(sc, reply->str);
        return;
    }
    if (reply->type != REDIS_REPLY_ARRAY || reply->elements == 0) {
        read_next(sc); /* BLOCK timed out */
        return;
    }
    if ((entries = read_entries(reply)) == NULL) {
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
    if (!sc->history && sc->trim_wait)
        return; /* on_stream_info reads on */
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
 * Ownership: the lease script
 * ------------------------------------------------------------------------- */

/* Marks the entries [from, to) of the request that the reply (the ids still
 * ours, in order) does not list as taken over. */
static void mark_lost(struct stream_consumer *sc, const struct lease_req *q, const redisReply *ids)
{
    size_t j = 0, lost = 0;

    for (size_t i = q->from; i < q->to && i < sc->n; i++) {
        struct entry *e = &sc->batch[i];

        if (j < ids->elements && ids->element[j]->type == REDIS_REPLY_STRING &&
            strcmp(ids->element[j]->str, e->entry_id) == 0) {
            j++;
            continue;
        }
        lost += !e->lost && i >= sc->next;
        e->lost = 1;
    }
    if (lost > 0)
        log_warn("consumer %s: %zu entries in hand were taken over by another consumer (this "
                 "one stalled past RECLAIM_IDLE_MS?); they are dropped here, unapplied",
                 sc->stream, lost);
}

static void on_lease(struct redis *r, struct redisReply *reply, void *data);

/* Sends the lease script for the entries not yet settled. */
static int send_lease(struct stream_consumer *sc, enum lease_then then)
{
    const char *argv[MAX_ARGS] = {"EVAL", lease_lua, "1", sc->stream, sc->group, sc->consumer};
    struct lease_req *q = malloc(sizeof(*q));
    int n = 6, rc;

    if (q == NULL)
        return -ENOMEM;
    *q = (struct lease_req){sc, sc->gen, sc->next, sc->next, uv_now(sc->svc->loop), then};
    for (; q->to < sc->n && n < MAX_ARGS; q->to++)
        argv[n++] = sc->batch[q->to].entry_id;
    rc = send_on(sc, sc->blk, on_lease, q, n, argv, NULL);
    if (rc < 0)
        free(q);
    else if (then == LEASE_REFRESH)
        sc->lease_inflight++;
    return rc;
}

/* Holds the batch and tries again after a backoff. */
static void hold(struct stream_consumer *sc);

static void process_now(struct stream_consumer *sc);

/* Applies a lease reply to the batch it was sent for. Returns 1 when it
 * confirmed what is ours (the entries it does not list are marked lost). */
static int lease_applied(struct stream_consumer *sc, const struct lease_req *q,
                         const redisReply *reply)
{
    static const redisReply none = {.type = REDIS_REPLY_ARRAY};

    if (q->gen != sc->gen || sc->batch == NULL || reply == NULL)
        return 0;
    if (reply->type == REDIS_REPLY_ERROR && strncmp(reply->str, "NOGROUP", 7) == 0)
        reply = &none; /* the group is gone, and its pending list with it */
    if (reply->type == REDIS_REPLY_ERROR)
        log_warn("consumer %s: lease script failed: %s", sc->stream, reply->str);
    if (reply->type != REDIS_REPLY_ARRAY)
        return 0;
    mark_lost(sc, q, reply);
    sc->lease_at = q->sent_at;
    return 1;
}

static void on_lease(struct redis *r, struct redisReply *reply, void *data)
{
    struct lease_req *q = data;
    struct stream_consumer *sc = q->sc;
    int confirmed = lease_applied(sc, q, reply);
    int waiting = q->then == LEASE_PROCESS && q->gen == sc->gen && sc->state == SC_CHECKING;

    (void)r;
    sc->inflight--;
    if (q->then == LEASE_REFRESH)
        sc->lease_inflight--;
    free(q);
    if (waiting && confirmed) {
        sc->need_confirm = 0;
        process_now(sc);
    } else if (waiting) {
        hold(sc); /* not confirmed: try again later */
    } else {
        maybe_close(sc);
    }
}

/* 1 when what is in hand must be confirmed ours before going on: after an
 * asynchronous step, or when the lease may have lapsed (the process was
 * stopped, Redis unreachable). */
static int lease_doubtful(struct stream_consumer *sc)
{
    return sc->need_confirm ||
           uv_now(sc->svc->loop) - sc->lease_at >= (uint64_t)sc->cfg.reclaim_idle_ms / 2;
}

/* Confirms ownership, then processes. */
static void confirm_then_process(struct stream_consumer *sc)
{
    sc->need_confirm = 1;
    sc->state = SC_CHECKING;
    if (send_lease(sc, LEASE_PROCESS) < 0)
        hold(sc);
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

/* The store failed under us: the whole transaction is void. */
static void store_failed(struct stream_consumer *sc)
{
    (void)store_check_fault(sc->store);
    sc->store_fault = 1;
}

static void msg_fill(struct stream_consumer *sc, struct entry *e, struct stream_msg *m)
{
    memset(m, 0, sizeof(*m));
    m->stream = sc->stream;
    m->entry_id = e->entry_id;
    m->id = e->env.id;
    m->type = e->env.type;
    m->decl = e->decl;
    m->trace = e->env.trace;
    if (e->span[0] == '\0') /* the same span when an asynchronous handler resumes */
        trace_child(e->env.traceparent[0] ? e->env.traceparent : NULL, e->span);
    m->traceparent = e->span;
    m->source = e->env.source;
    m->data = e->env.data;
    m->deliveries = e->deliveries;
    m->failures = e->failures;
    m->done = &sc->done;
}

/* A failed handler (rc < 0, not -EAGAIN), its effects rolled back: one more
 * failure in the ledger; at max_deliveries, the dead letter. */
static void handler_failed(struct stream_consumer *sc, struct entry *e, int rc)
{
    char why[STREAM_MSG_REASON + 96];
    const char *err = strerror(rc < 0 ? -rc : EINVAL);

    if (stream_ledger_fail(sc->ledger, e->entry_id, err, &e->failures) < 0) {
        store_failed(sc);
        return;
    }
    if (e->failures >= sc->cfg.max_deliveries) {
        snprintf(why, sizeof(why), "handler failed %u times (MAX_DELIVERIES %u): %s", e->failures,
                 sc->cfg.max_deliveries, err);
        set_outcome(e, OUT_DLQ, "dead_lettered", why);
        return;
    }
    log_warn("consumer %s: %s %s failed (%u of %u): %s; retried after a backoff", sc->stream,
             e->env.type, e->entry_id, e->failures, sc->cfg.max_deliveries, err);
    set_outcome(e, OUT_FAIL, "failed", NULL);
}

/* 1 when the handler's failure (or a transaction SQLite rolled back on its
 * own) is the store's, not the entry's. */
static int store_at_fault(struct stream_consumer *sc, int rc)
{
    if (!store_in_txn(sc->store))
        return 1;
    return rc < 0 && rc != -EAGAIN && store_check_fault(sc->store);
}

/* Settles what a handler returned for e (inside the entry's savepoint). */
static void settle(struct stream_consumer *sc, struct entry *e, int rc)
{
    char why[STREAM_MSG_REASON + 64];

    if (store_at_fault(sc, rc)) {
        store_failed(sc);
        return;
    }
    if (rc == 0 && e->failures > 0 && stream_ledger_forget(sc->ledger, e->entry_id) < 0) {
        store_failed(sc);
        return;
    }
    if (rc == 0) {
        if (step_done(sc->release_st) < 0)
            store_failed(sc);
        set_outcome(e, OUT_ACK, "ok", NULL);
        return;
    }
    if (step_done(sc->undo_st) < 0 || step_done(sc->release_st) < 0) {
        store_failed(sc);
        return;
    }
    if (rc == STREAM_CONSUMER_SKIP) {
        set_outcome(e, OUT_ACK, "skipped", NULL);
    } else if (rc == STREAM_CONSUMER_REJECT) {
        snprintf(why, sizeof(why), "rejected: %s", sc->msg.reason[0] ? sc->msg.reason : "refused");
        set_outcome(e, OUT_DLQ, "rejected", why);
    } else if (rc == STREAM_CONSUMER_ASYNC) {
        e->outcome = OUT_ASYNC;
    } else if (rc == -EAGAIN) {
        set_outcome(e, OUT_RETRY, "retry", NULL);
    } else {
        handler_failed(sc, e, rc);
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

    scope(sc);
    stream_consumer_done(&sc->done, 0);
}

/* The handler, unless fault injection says otherwise. */
static int call_handler(struct stream_consumer *sc)
{
    const char *type = sc->msg.type;
    stream_consumer_msg_cb fn = sc->on_msg;
    int rc;

    if (listed(sc->chaos_fail_types, type))
        return -EIO;
    if (sc->chaos_state == 0 && sc->chaos_delay_ms > 0 && listed(sc->chaos_delay_types, type) &&
        sc->msg.deliveries == 1) {
        sc->chaos_state = 1;
        uv_timer_start(&sc->chaos, on_chaos_timer, sc->chaos_delay_ms, 0);
        return STREAM_CONSUMER_ASYNC;
    }
    if (sc->msg.decl != NULL && sc->msg.decl->handler != NULL)
        fn = sc->msg.decl->handler;
    if (fn == NULL)
        return STREAM_CONSUMER_SKIP; /* declared, with nothing to do */
    trace_set(sc->msg.traceparent);  /* what the handler emits and logs continues the trace */
    rc = fn(&sc->msg, sc->data);
    trace_set(NULL);
    return rc;
}

/* The checks before a fresh entry's handler: 1 when they settled it. */
static int settled_before_handler(struct stream_consumer *sc, struct entry *e)
{
    char err[160];

    /* an entry read for the first time has no failures recorded, unless
     * its group was recreated (then the next failure counts on from them) */
    if ((e->deliveries > 1 || e->failures > 0) &&
        stream_ledger_failures(sc->ledger, e->entry_id, &e->failures) < 0) {
        store_failed(sc);
        return 1;
    }
    if (e->failures >= sc->cfg.max_deliveries) {
        snprintf(err, sizeof(err), "handler failed %u times (MAX_DELIVERIES %u)", e->failures,
                 sc->cfg.max_deliveries);
        set_outcome(e, OUT_DLQ, "dead_lettered", err);
        return 1;
    }
    if (e->deliveries > sc->cfg.max_deliveries_guard) {
        snprintf(err, sizeof(err),
                 "delivered %u times without being settled (MAX_DELIVERIES_GUARD %u): the "
                 "consumer keeps dying on it?",
                 e->deliveries, sc->cfg.max_deliveries_guard);
        set_outcome(e, OUT_DLQ, "dead_lettered", err);
        return 1;
    }
    return 0;
}

/* Runs e's handler (or records its asynchronous failure) inside the
 * entry's savepoint, which holds its inbox claim. */
static void run_handler(struct stream_consumer *sc, struct entry *e)
{
    enum phase phase = e->phase;
    int rc;

    e->phase = PH_FRESH; /* whatever happens now, a retry starts over */
    if (phase == PH_ASYNC_FAILED) {
        rc = e->async_rc;
    } else {
        if (phase == PH_FRESH) {
            msg_fill(sc, e, &sc->msg);
            sc->chaos_state = 0;
        }
        /* after a fault-injected delay the handler runs for the first time */
        sc->msg.resumed = phase == PH_RESUME && sc->chaos_state != 1;
        if (sc->chaos_state == 1)
            sc->chaos_state = 2;
        rc = call_handler(sc);
    }
    settle(sc, e, rc);
}

/* Decides e inside the open transaction. */
static void handle_entry(struct stream_consumer *sc, struct entry *e)
{
    char err[STREAMS_MAX_ERR + 32], why[STREAMS_MAX_ERR];
    int claimed;

    if (e->lost) {
        set_outcome(e, OUT_LOST, "taken_over", NULL);
        return;
    }
    if (!e->parsed) {
        int rc = envelope_parse(sc->stream, e->entry_id, e->fields, e->nfields, sc->cfg.types,
                                &e->decl, &e->env, why, sizeof(why));

        if (rc == -ENOENT && !streams_is_commands(sc->stream)) {
            e->parsed = 1;                            /* its type, for the metric; no data held */
            set_outcome(e, OUT_ACK, "skipped", NULL); /* an event we do not act on */
            return;
        }
        if (rc == 0)
            e->parsed = 1;
        if (rc < 0) {
            snprintf(err, sizeof(err), "malformed: %s", why);
            set_outcome(e, OUT_DLQ, "malformed", err);
            return;
        }
    }
    if (e->phase == PH_FRESH && settled_before_handler(sc, e))
        return;
    /* The claim, again when resuming: another process on this database may
     * have settled the event meanwhile. It is the entry's first write, in
     * its savepoint. */
    if (step_done(sc->save_st) < 0 || (claimed = stream_ledger_claim(sc->ledger, e->env.id)) < 0) {
        store_failed(sc);
        return;
    }
    if (!claimed) {
        if (step_done(sc->release_st) < 0)
            store_failed(sc);
        set_outcome(e, OUT_ACK, "duplicate", NULL);
        return;
    }
    run_handler(sc, e);
}

/* Runs the entries from `from` until the end, a failure, an asynchronous
 * handler, a store failure or SC_CHUNK entries. Returns the index of the
 * entry that stopped it (sc->n when none did; an entry still OUT_TODO when
 * the chunk is full). */
static size_t run_entries(struct stream_consumer *sc, size_t from)
{
    size_t i;

    for (i = from; i < sc->n && i - from < SC_CHUNK; i++) {
        struct entry *e = &sc->batch[i];

        if (e->outcome == OUT_TODO)
            handle_entry(sc, e);
        if (sc->store_fault || e->outcome == OUT_FAIL || e->outcome == OUT_RETRY ||
            e->outcome == OUT_ASYNC)
            break;
    }
    return i;
}

/* Moves the position settled last up to the last entry settled in
 * [from, to) (entries are in id order). */
static int advance_position(struct stream_consumer *sc, size_t from, size_t to)
{
    struct stream_id id;

    for (size_t i = to; i > from; i--) {
        const struct entry *e = &sc->batch[i - 1];

        if (e->outcome != OUT_ACK && e->outcome != OUT_DLQ)
            continue;
        if (stream_id_parse(e->entry_id, &id) < 0)
            return 0;
        return stream_ledger_advance(sc->ledger, &id);
    }
    return 0;
}

/* ---------------------------------------------------------------------------
 * Acknowledging: XACK for settled entries and dead letters (the script),
 * both after the commit, on blk
 * ------------------------------------------------------------------------- */

static void on_dead_letter(struct redis *r, struct redisReply *reply, void *data);

static void dead_letter_failed(struct stream_consumer *sc, struct entry *e, const char *why)
{
    e->dlq = DLQ_FAILED;
    if (sc->dlq_failed_c != NULL)
        metrics_counter_add(sc->dlq_failed_c, 1);
    if (e->dlq_logged)
        return;
    e->dlq_logged = 1;
    log_error("consumer %s: could not dead-letter entry %s to %s: %s; it stays pending and the "
              "stream waits while this is retried",
              sc->stream, e->entry_id, sc->dlq, why);
}

/* Sends e's dead letter: its fields plus error, group, deliveries, failures. */
static void dead_letter_send(struct stream_consumer *sc, size_t idx)
{
    struct entry *e = &sc->batch[idx];
    const char *argv[MAX_ARGS] = {"EVAL",  dead_letter_lua, "2",          sc->stream,
                                  sc->dlq, sc->group,       sc->consumer, e->entry_id};
    size_t lens[MAX_ARGS];
    char deliveries[16], failures[16];
    struct dlq_req *q = malloc(sizeof(*q));
    int n = 8;

    for (int i = 0; i < n; i++)
        lens[i] = strlen(argv[i]);
    for (size_t i = 0; i < e->nfields && n + 10 < MAX_ARGS; i++) {
        argv[n] = e->fields[i].name, lens[n++] = e->fields[i].name_len;
        argv[n] = e->fields[i].value, lens[n++] = e->fields[i].value_len;
    }
    snprintf(deliveries, sizeof(deliveries), "%u", e->deliveries);
    snprintf(failures, sizeof(failures), "%u", e->failures);
    argv[n++] = DLQ_ERROR, argv[n++] = e->error ? e->error : "unknown";
    argv[n++] = DLQ_GROUP, argv[n++] = sc->group;
    argv[n++] = DLQ_DELIVERIES, argv[n++] = deliveries;
    argv[n++] = DLQ_FAILURES, argv[n++] = failures;
    for (int i = n - 8; i < n; i++)
        lens[i] = strlen(argv[i]);
    if (q != NULL)
        *q = (struct dlq_req){sc, sc->gen, idx};
    if (q == NULL || send_on(sc, sc->blk, on_dead_letter, q, n, argv, lens) < 0) {
        free(q);
        dead_letter_failed(sc, e, "not sent (Redis unreachable)");
        return;
    }
    e->dlq = DLQ_SENT;
    sc->dlq_inflight++;
}

static void on_dead_letter(struct redis *r, struct redisReply *reply, void *data)
{
    struct dlq_req *q = data;
    struct stream_consumer *sc = q->sc;
    struct entry *e = q->gen == sc->gen && q->idx < sc->n ? &sc->batch[q->idx] : NULL;

    (void)r;
    sc->inflight--;
    free(q);
    if (e == NULL) {
        maybe_close(sc);
        return;
    }
    sc->dlq_inflight--;
    if (reply != NULL && reply->type == REDIS_REPLY_INTEGER) {
        e->dlq = DLQ_DONE;
        if (reply->integer == 1)
            /* with the entry's trace: one order's refusals show in its lines */
            log_write(LOG_LEVEL_WARN, e->parsed && e->env.trace[0] ? e->env.trace : NULL,
                      "consumer %s: %s %s dead-lettered to %s: %s", sc->stream,
                      e->parsed ? e->env.type : "entry", e->entry_id, sc->dlq,
                      e->error ? e->error : "unknown");
        else
            log_warn("consumer %s: entry %s not dead-lettered: another consumer has it now",
                     sc->stream, e->entry_id);
    } else {
        dead_letter_failed(sc, e,
                           reply == NULL                      ? "Redis connection lost"
                           : reply->type == REDIS_REPLY_ERROR ? reply->str
                                                              : "unexpected reply");
    }
    if (sc->dlq_inflight == 0 && sc->state == SC_SETTLING)
        batch_done(sc);
}

/* Acks and dead-letters the entries [from, to), all settled. */
static void acknowledge(struct stream_consumer *sc, size_t from, size_t to)
{
    const char *argv[MAX_ARGS];
    int n = 3;

    argv[0] = "XACK";
    argv[1] = sc->stream;
    argv[2] = sc->group;
    for (size_t i = from; i < to; i++) {
        struct entry *e = &sc->batch[i];

        count_event(sc, entry_type(e), e->result ? e->result : "ok");
        if (e->outcome == OUT_DLQ)
            dead_letter_send(sc, i);
        else if (e->outcome == OUT_ACK && n < MAX_ARGS)
            argv[n++] = e->entry_id;
    }
    if (n > 3 && send_on(sc, sc->blk, NULL, NULL, n, argv, NULL) < 0)
        log_warn("consumer %s: XACK not sent (Redis down); the entries will be redelivered and "
                 "recognised as duplicates",
                 sc->stream);
}

/* ---------------------------------------------------------------------------
 * Holding the batch, and the end of a batch
 * ------------------------------------------------------------------------- */

static void on_retry_held(uv_timer_t *t)
{
    struct stream_consumer *sc = t->data;

    scope(sc);
    if (sc->closing) {
        batch_free(sc); /* still pending in Redis: redelivered after a restart */
        sc->state = SC_WAITING;
        maybe_close(sc);
        return;
    }
    process(sc);
}

static void hold(struct stream_consumer *sc)
{
    if (sc->closing) {
        if (sc->dlq_inflight > 0) {
            sc->state = SC_SETTLING; /* batch_done frees it when they are in */
            return;
        }
        batch_free(sc);
        sc->state = SC_WAITING;
        maybe_close(sc);
        return;
    }
    sc->state = SC_HOLDING;
    uv_timer_start(&sc->retry, on_retry_held, next_backoff(sc), 0);
}

/* The store failed while processing: everything since BEGIN is rolled
 * back, so the entries [next, upto] are run again later. No failure counts,
 * nothing is dead-lettered for it. */
static void hold_for_store(struct stream_consumer *sc, size_t upto)
{
    int code = store_fault(sc->store);

    store_rollback(sc->store);
    sc->store_fault = 0;
    for (size_t i = sc->next; i <= upto && i < sc->n; i++) {
        struct entry *e = &sc->batch[i];

        if (e->dangling)
            continue;
        e->outcome = OUT_TODO;
        e->phase = PH_FRESH;
        e->result = NULL;
        free(e->error);
        e->error = NULL;
    }
    sc->chaos_state = 0;
    if (sc->store_failed_c != NULL)
        metrics_counter_add(sc->store_failed_c, 1);
    if (!sc->store_failing)
        log_warn("consumer %s: the database cannot write (%s); the batch stays in hand and is "
                 "retried, and nothing counts against its entries",
                 sc->stream, code ? sqlite3_errstr(code) : store_errmsg(sc->store));
    sc->store_failing = 1;
    hold(sc);
}

/* The entry at sc->next stopped the batch with outcome o (failed, or its
 * dependency is down): the batch is kept in hand (leased) and the entry is
 * retried after a backoff. */
static void hold_entry(struct stream_consumer *sc, struct entry *e)
{
    count_event(sc, entry_type(e), e->outcome == OUT_RETRY ? "retry" : "failed");
    e->outcome = OUT_TODO;
    hold(sc);
}

/* Sends again the dead letters Redis refused or never got. */
static void resend_dead_letters(struct stream_consumer *sc)
{
    for (size_t i = 0; i < sc->n && !sc->closing; i++) {
        if (sc->batch[i].dlq == DLQ_FAILED)
            dead_letter_send(sc, i);
    }
}

/* Every entry is settled: once their dead letters are written, the batch
 * is freed and the next read goes out. A refused dead letter holds the
 * batch (the stream waits) and is sent again after a backoff. */
static void batch_done(struct stream_consumer *sc)
{
    if (sc->dlq_inflight > 0) {
        sc->state = SC_SETTLING;
        return;
    }
    for (size_t i = 0; i < sc->n; i++) {
        if (sc->batch[i].dlq == DLQ_FAILED) {
            hold(sc);
            return;
        }
    }
    batch_free(sc);
    sc->state = SC_WAITING;
    if (sc->closing)
        maybe_close(sc);
    else
        read_next(sc);
}

/* After the commit of the entries [sc->next, i): acks them and goes on. */
static void after_commit(struct stream_consumer *sc, size_t i)
{
    struct entry *stop = i < sc->n ? &sc->batch[i] : NULL;

    if (sc->store_failing) {
        sc->store_failing = 0;
        log_info("consumer %s: the database writes again; the batch goes on", sc->stream);
    }
    if (i > sc->next)
        sc->backoff_ms = 0;
    acknowledge(sc, sc->next, i);
    sc->next = i;
    if (stop != NULL && stop->outcome == OUT_ASYNC) {
        sc->state = SC_ASYNC;
        return;
    }
    if (stop != NULL) {
        hold_entry(sc, stop);
        return;
    }
    batch_done(sc);
}

/* Runs the batch from sc->next until it is done, an entry fails, or an
 * asynchronous handler takes one; first confirms what is ours if that is
 * in doubt. */
static void process(struct stream_consumer *sc)
{
    if (sc->next < sc->n && lease_doubtful(sc))
        confirm_then_process(sc);
    else
        process_now(sc);
}

/* Closing: a batch that only waits -- for a backoff, or an injected delay --
 * is let go; nothing of ours waits on it: its entries stay pending in Redis
 * and are redelivered after a restart. */
static void let_go(struct stream_consumer *sc)
{
    if (sc->state == SC_HOLDING || (sc->state == SC_ASYNC && sc->chaos_state == 1)) {
        uv_timer_stop(&sc->chaos);
        uv_timer_stop(&sc->retry);
        sc->state = SC_WAITING;
        hold(sc); /* closing: frees the batch once its dead letters are in */
    }
}

/* The group COMMIT that carried the batch's transaction is done: with ok,
 * the entries are acknowledged; without, they were rolled back with it and
 * run again, as after any store failure. */
static void on_batch_durable(void *data, int ok)
{
    struct stream_consumer *sc = data;

    scope(sc);
    if (sc->state != SC_DURABLE)
        return;
    sc->state = SC_WAITING;
    if (!ok) {
        sc->early_done = 0;
        hold_for_store(sc, sc->durable_upto);
    } else {
        after_commit(sc, sc->durable_upto);
        if (sc->early_done) { /* its answer came before the commit */
            sc->early_done = 0;
            stream_consumer_done(&sc->done, sc->early_rc);
        }
    }
    if (sc->closing) { /* the stop came while it waited */
        let_go(sc);
        maybe_close(sc);
    }
}

static void process_now(struct stream_consumer *sc)
{
    size_t from, i;

    if (sc->next >= sc->n) {
        resend_dead_letters(sc);
        batch_done(sc);
        return;
    }
    if (store_begin(sc->store) < 0) {
        sc->store_fault = 1;
        hold_for_store(sc, sc->next);
        return;
    }
    from = sc->next;
    for (;;) {
        i = run_entries(sc, from);
        if (sc->store_fault || i == sc->n || sc->batch[i].outcome != OUT_TODO)
            break;
        /* A full chunk: its transaction ends here, into the iteration's
         * group (see SC_CHUNK), and the next chunk's begins. Should the
         * store fail later in the batch, hold_for_store runs these entries
         * again too: their inbox claims make them duplicates then. */
        if (advance_position(sc, from, i) < 0 || store_commit(sc->store) < 0 ||
            store_begin(sc->store) < 0) {
            store_failed(sc);
            break;
        }
        from = i;
    }
    if (!sc->store_fault && advance_position(sc, from, i) < 0)
        store_failed(sc);
    if (sc->store_fault || store_commit(sc->store) < 0) {
        hold_for_store(sc, i);
        return;
    }
    /* Nothing is acknowledged before it is durable: with group commit the
     * XACKs wait for the iteration's COMMIT. */
    switch (store_when_durable(sc->store, on_batch_durable, sc)) {
    case 0:
        sc->state = SC_DURABLE;
        sc->durable_upto = i;
        return;
    case 1:
        break;
    default: /* cannot wait: the entries are redelivered, never acked early */
        hold_for_store(sc, i);
        return;
    }
    after_commit(sc, i);
}

void stream_consumer_done(struct stream_done *done, int rc)
{
    struct stream_consumer *sc = done->sc;
    struct entry *e;

    if (sc->state == SC_DURABLE && sc->durable_upto < sc->n &&
        sc->batch[sc->durable_upto].outcome == OUT_ASYNC) {
        /* it answered before the batch's commit: kept until then */
        sc->early_done = 1;
        sc->early_rc = rc;
        return;
    }
    if (sc->state != SC_ASYNC || sc->next >= sc->n)
        return; /* not waiting for one: a stray call */
    e = &sc->batch[sc->next];
    e->outcome = OUT_TODO;
    if (rc == -EAGAIN) { /* a dependency is down: start over later */
        e->phase = PH_FRESH;
        e->outcome = OUT_RETRY;
        hold_entry(sc, e);
        return;
    }
    e->phase = rc < 0 ? PH_ASYNC_FAILED : PH_RESUME;
    e->async_rc = rc;
    /* it took its time: apply only what is still ours */
    confirm_then_process(sc);
}

/* ---------------------------------------------------------------------------
 * Upkeep: take over dead consumers' entries, keep ours leased, stats, prune
 * ------------------------------------------------------------------------- */

static void ack_dangling(struct stream_consumer *sc, const redisReply *gone)
{
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

static void on_autoclaim(struct redis *r, struct redisReply *reply, void *data)
{
    struct stream_consumer *sc = data;
    const redisReply *ids, *gone;

    (void)r;
    sc->inflight--;
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
    if (gone != NULL && gone->type == REDIS_REPLY_ARRAY && gone->elements > 0)
        ack_dangling(sc, gone);
}

/* Refreshes the lease of the entries in hand (only those still ours), so
 * nobody takes over the entries of a slow (not a dead) consumer. */
static void refresh_lease(struct stream_consumer *sc)
{
    if (sc->batch == NULL || sc->next >= sc->n || sc->lease_inflight > 0 ||
        sc->state == SC_CHECKING)
        return;
    if (send_lease(sc, LEASE_REFRESH) < 0)
        log_debug("consumer %s: lease not refreshed now", sc->stream);
}

static void on_claim_timer(uv_timer_t *t)
{
    struct stream_consumer *sc = t->data;
    char idle[16], count[16];
    const char *argv[] = {"XAUTOCLAIM",     sc->stream, sc->group, sc->consumer, idle,
                          sc->claim_cursor, "COUNT",    count,     "JUSTID"};

    scope(sc);
    if (sc->closing)
        return;
    refresh_lease(sc);
    if (!redis_is_up(sc->cmd))
        return;
    snprintf(idle, sizeof(idle), "%u", sc->cfg.reclaim_idle_ms);
    snprintf(count, sizeof(count), "%u", sc->cfg.batch);
    if (send_on(sc, sc->cmd, on_autoclaim, sc, 9, argv, NULL) < 0)
        log_debug("consumer %s: XAUTOCLAIM not sent now", sc->stream);
}

static void prune_inbox(struct stream_consumer *sc)
{
    if (store_in_txn(sc->store) || store_begin(sc->store) < 0)
        return;
    if (stream_ledger_prune(sc->ledger, clock_now_ms() - (int64_t)sc->cfg.inbox_retention_ms,
                            PRUNE_BATCH) < 0) {
        log_warn("consumer %s: inbox pruning failed: %s", sc->stream, store_errmsg(sc->store));
        store_rollback(sc->store);
        return;
    }
    if (store_commit(sc->store) < 0)
        log_warn("consumer %s: inbox pruning not committed", sc->stream);
}

/* Prunes every half retention, between STATS_MS and PRUNE_MS apart. */
static uint64_t prune_every(const struct stream_consumer *sc)
{
    uint64_t every = sc->cfg.inbox_retention_ms / 2;

    return every < STATS_MS ? STATS_MS : every > PRUNE_MS ? PRUNE_MS : every;
}

static void on_stats_timer(uv_timer_t *t)
{
    struct stream_consumer *sc = t->data;
    uint64_t now = uv_now(t->loop);

    scope(sc);
    if (sc->closing)
        return;
    if (now - sc->last_prune >= prune_every(sc)) {
        sc->last_prune = now;
        prune_inbox(sc);
    }
    if (ask_stream_info(sc) < 0)
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

    if ((rc = stream_ledger_open(st, sc->stream, &sc->ledger)) < 0 ||
        (rc = stream_ledger_trimmed(sc->ledger, &sc->trimmed)) < 0 ||
        (rc = store_prepare(st, "SAVEPOINT entry", &sc->save_st)) < 0 ||
        (rc = store_prepare(st, "RELEASE entry", &sc->release_st)) < 0 ||
        (rc = store_prepare(st, "ROLLBACK TO entry", &sc->undo_st)) < 0)
        return rc;
    return 0;
}

static struct metrics_counter *stream_counter(struct stream_consumer *sc, const char *name,
                                              const char *help)
{
    char labels[96];
    struct metrics_counter *c;

    snprintf(labels, sizeof(labels), "stream=\"%s\"", sc->stream);
    c = metrics_counter(sc->svc->metrics, name, help, labels);
    if (c != NULL)
        metrics_counter_add(c, 0); /* rendered from the start, at 0 */
    return c;
}

static int register_metrics(struct stream_consumer *sc)
{
    char labels[96];

    snprintf(labels, sizeof(labels), "stream=\"%s\"", sc->stream);
    sc->trimmed_c = stream_counter(sc, "stream_trimmed_unread_total",
                                   "Entries trimmed from the stream (MAXLEN) before the group "
                                   "read them: lost to this service.");
    sc->dlq_failed_c = stream_counter(sc, "stream_dead_letter_failures_total",
                                      "Dead letters Redis refused or did not answer (the entry "
                                      "stays pending and is retried).");
    sc->store_failed_c = stream_counter(sc, "stream_store_failures_total",
                                        "Batches rolled back because the database could not "
                                        "write (disk full, locked, I/O error); retried.");
    if (sc->trimmed_c == NULL || sc->dlq_failed_c == NULL || sc->store_failed_c == NULL ||
        metrics_gauge(sc->svc->metrics, "stream_pending",
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

    const char *prefix = sc->svc->cfg.prefix; /* ORDERS_CHAOS_... wins over CHAOS_... */

    if (config_str_for(prefix, "CHAOS_FAIL_TYPES", "", 0, &sc->chaos_fail_types, err, sizeof(err)) <
            0 ||
        config_str_for(prefix, "CHAOS_DELAY_TYPES", "", 0, &sc->chaos_delay_types, err,
                       sizeof(err)) < 0 ||
        config_uint_for(prefix, "CHAOS_DELAY_MS", 0, 0, 3600000, &delay, err, sizeof(err)) < 0) {
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
        .log_scope = sc->svc->module != NULL ? sc->svc->module->name : NULL,
        .command_timeout_ms = sc->cfg.block_ms + 10000,
    };
    char err[CONFIG_ERR_MAX];

    if (redis_new(sc->svc->loop, &rc, &sc->blk, err, sizeof(err)) < 0)
        return -EINVAL;
    return redis_listen(sc->blk, on_blk_state, sc);
}

static int check_config(const struct stream_consumer_config *cfg)
{
    if (cfg->batch == 0 || cfg->batch > CONFIG_CONSUMER_BATCH_MAX || cfg->max_deliveries == 0)
        return -EINVAL;
    return 0;
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
    sc->start_new = cfg->start != NULL && strcmp(cfg->start, "$") == 0;
    sc->cfg.start = NULL; /* not kept: start_new says it */
    if (sc->cfg.max_deliveries_guard < sc->cfg.max_deliveries)
        sc->cfg.max_deliveries_guard = sc->cfg.max_deliveries;
    sc->on_msg = on_msg;
    sc->data = data;
    sc->done.sc = sc;
    if (snprintf(sc->stream, sizeof(sc->stream), "%s", cfg->stream) >= (int)sizeof(sc->stream) ||
        streams_dlq_name(sc->stream, sc->dlq, sizeof(sc->dlq)) < 0 || sc->store == NULL ||
        check_config(cfg) < 0) {
        free(sc);
        return -EINVAL;
    }
    snprintf(sc->group, sizeof(sc->group), "%s", svc->cfg.service);
    snprintf(sc->consumer, sizeof(sc->consumer), "%s", svc->cfg.consumer_name);
    snprintf(sc->claim_cursor, sizeof(sc->claim_cursor), "0-0");
    sc->cfg.stream = sc->stream;
    if ((rc = read_chaos(sc)) < 0 || (rc = prepare_all(sc)) < 0 ||
        (rc = register_metrics(sc)) < 0 || (rc = open_blocking(sc)) < 0) {
        metrics_gauge_detach(svc->metrics, sc);
        stream_ledger_free(sc->ledger);
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
    stream_ledger_free(sc->ledger);
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
    if (!sc->closing || sc->close_started || sc->batch != NULL || sc->inflight > 0 ||
        sc->state == SC_COUNTING || sc->state == SC_ASYNC)
        return;
    sc->close_started = 1;
    sc->pending_closes = 5;
    uv_close((uv_handle_t *)&sc->chaos, on_handle_closed);
    uv_close((uv_handle_t *)&sc->retry, on_handle_closed);
    uv_close((uv_handle_t *)&sc->claim, on_handle_closed);
    uv_close((uv_handle_t *)&sc->stats, on_handle_closed);
    redis_close(sc->blk, on_blk_closed, (void *)sc);
}

void stream_consumer_close(struct stream_consumer *sc, stream_consumer_closed_cb closed_cb,
                           void *data)
{
    sc->closing = 1;
    sc->closed_cb = closed_cb;
    sc->closed_data = data;
    uv_timer_stop(&sc->claim);
    uv_timer_stop(&sc->stats);
    if (sc->state == SC_WAITING)
        uv_timer_stop(&sc->retry);
    let_go(sc);
    maybe_close(sc);
}

/* ---------------------------------------------------------------------------
 * Wiring into the service
 * ------------------------------------------------------------------------- */

static void on_cmd_state(struct redis *r, int up, void *data);

/* The release of a set of consumers (service_consume): called when the
 * last of them has closed. */
struct release_group {
    unsigned left;
    stream_consumer_release_cb release;
    void *data;
};

/* What an attached consumer keeps for the service's stop. */
struct attachment {
    struct stream_consumer *sc;
    struct service *svc;
    service_stop_done_cb done;
    struct release_group *group; /* shared by the consumers of one attach call */
};

static void on_attached_closed(void *data)
{
    struct attachment *at = data;
    service_stop_done_cb done = at->done;
    struct service *svc = at->svc;
    struct release_group *g = at->group;

    if (--g->left == 0) {
        if (g->release)
            g->release(g->data);
        free(g);
    }
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

static struct stream_consumer *attach(struct service *svc, const char *stream,
                                      stream_consumer_msg_cb on_msg, void *data,
                                      struct release_group *group)
{
    const struct config *cfg = &svc->cfg;
    struct stream_consumer_config cc = {
        .stream = stream,
        .types = svc->module != NULL ? svc->module->consumes : NULL,
        .start = cfg->consumer_start,
        .batch = cfg->consumer_batch,
        .block_ms = cfg->consumer_block_ms,
        .reclaim_idle_ms = cfg->reclaim_idle_ms,
        .max_deliveries = cfg->max_deliveries,
        .max_deliveries_guard = cfg->max_deliveries_guard,
        .inbox_retention_ms = cfg->inbox_retention_ms,
    };
    struct attachment *at = calloc(1, sizeof(*at));
    struct stream_consumer *sc;
    int rc = at ? stream_consumer_new(svc, &cc, on_msg, data, &sc) : -ENOMEM;

    if (rc < 0)
        service_fatal(svc, "cannot consume %s: %s", stream, strerror(-rc));
    at->sc = sc;
    at->svc = svc;
    at->group = group;
    group->left++;
    if (redis_listen(svc->redis, on_cmd_state, sc) < 0)
        service_fatal(svc, "too many listeners on the Redis connection");
    service_on_stop(svc, on_service_stop, at);
    return sc;
}

static struct release_group *new_group(struct service *svc, stream_consumer_release_cb release,
                                       void *data)
{
    struct release_group *g = calloc(1, sizeof(*g));

    if (g == NULL)
        service_fatal(svc, "out of memory");
    g->release = release;
    g->data = data;
    return g;
}

struct stream_consumer *stream_consumer_attach(struct service *svc, const char *stream,
                                               stream_consumer_msg_cb on_msg, void *data,
                                               stream_consumer_release_cb release)
{
    return attach(svc, stream, on_msg, data, new_group(svc, release, data));
}

void service_consume(struct service *svc, void *data, stream_consumer_release_cb release)
{
    const struct stream_type *all = svc->module->consumes;
    struct release_group *g = new_group(svc, release, data);

    for (const struct stream_type *t = all; t != NULL && t->stream != NULL; t++) {
        const struct stream_type *first = all;

        while (strcmp(first->stream, t->stream) != 0)
            first++;
        if (first == t) /* the first declaration of its stream: one consumer */
            attach(svc, t->stream, NULL, data, g);
    }
    if (g->left == 0) { /* nothing declared: nothing will ever release */
        if (release)
            release(data);
        free(g);
    }
}
