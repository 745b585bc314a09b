/* test_outbox.c -- core/outbox's relay against a scripted Redis
 * (fake_redis.c) on a private loop, with its store in a fresh mkdtemp
 * directory: exactly the rows Redis accepted are marked, rows refused for
 * good are set aside and the rest keep flowing, a row refused for now is
 * retried alone, a failed mark (a trigger makes it fail as a full disk would)
 * sends nothing again, a re-queue by another connection is noticed, passes
 * are pipelined (a commit's rows go out while an earlier pass waits for its
 * replies: fake_redis holds them) and lost replies of pipelined passes send
 * their rows again in order.
 * Every test closes everything and asserts uv_loop_close() == 0. */
#include <criterion/criterion.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <jansson.h>
#include <sqlite3.h>
#include <uv.h>

#include "fake_redis.h"
#include <ripple/log.h>
#include <ripple/metrics.h>
#include <ripple/outbox.h>
#include <ripple/redis.h>
#include <ripple/service.h>
#include <ripple/store.h>

#include "db_fixture.h"
#include <ripple/streams.h>

#define MAX_EVENTS 16

#define RUN_UNTIL(x, pred, ms) fake_redis_run_until(&(x)->loop, (pred), (x), (ms))

struct fx {
    uv_loop_t loop;
    struct fake_redis fake;
    struct service svc;
    char dir[64], path[128];
    int oom_left; /* OOM answers still to give to stream "oom" */
    int bad_fixed;
    char ids[MAX_EVENTS][IDS_UUID_LEN + 1];
    unsigned xadds[MAX_EVENTS]; /* per event, by order of append */
    int sent[4 * MAX_EVENTS];   /* the events of the XADDs, in the order Redis got them */
    unsigned nsent;
    int hold_slow; /* the next XADD to stream "slow" starts holding replies */
    unsigned nids, entry;
    int closed;
};

static int event_index(const struct fx *x, const char *id)
{
    for (unsigned i = 0; i < x->nids; i++) {
        if (strcmp(x->ids[i], id) == 0)
            return (int)i;
    }
    return -1;
}

/* XADD <stream> MAXLEN ~ N * type T data D id I ...: counts per event id;
 * stream "bad" is of the wrong type, stream "oom" is out of memory for
 * oom_left answers. */
static const char *on_cmd(struct fake_redis *f, int argc, char **argv)
{
    struct fx *x = f->data;
    static char reply[64];
    int i;

    if (strcasecmp(argv[0], "XADD") != 0)
        return NULL;
    for (i = 2; i + 1 < argc && strcmp(argv[i], "id") != 0; i++)
        ;
    if (i + 1 < argc && event_index(x, argv[i + 1]) >= 0)
        x->xadds[event_index(x, argv[i + 1])]++;
    if (i + 1 < argc && x->nsent < ARRAY_SIZE(x->sent))
        x->sent[x->nsent++] = event_index(x, argv[i + 1]);
    if (strcmp(argv[1], "slow") == 0 && x->hold_slow) {
        x->hold_slow = 0;
        f->holding = 1;
    }
    if (strcmp(argv[1], "bad") == 0 && !x->bad_fixed)
        return "-WRONGTYPE Operation against a key holding the wrong kind of value\r\n";
    if (strcmp(argv[1], "oom") == 0 && x->oom_left > 0) {
        x->oom_left--;
        return "-OOM command not allowed when used memory > 'maxmemory'.\r\n";
    }
    x->entry++;
    snprintf(reply, sizeof(reply), "$%d\r\n%u-0\r\n", snprintf(NULL, 0, "%u-0", x->entry),
             x->entry);
    return reply;
}

static int redis_up(const void *arg)
{
    const struct fx *x = arg;

    return redis_is_up(x->svc.redis);
}

static struct outbox_config test_outbox = {.source = "test", .batch = 64, .retention_ms = 3600000};

static void fx_open_emits(struct fx *x, const struct stream_type *emits)
{
    struct outbox_config oc = test_outbox;
    struct redis_config rc = {.name = "test", .backoff_min_ms = 10, .backoff_max_ms = 40};
    char url[64], err[256];

    memset(x, 0, sizeof(*x));
    log_set_level(LOG_LEVEL_ERROR);
    snprintf(x->dir, sizeof(x->dir), "/tmp/ripple-outbox-XXXXXX");
    tmpdir_make(x->dir);
    snprintf(x->path, sizeof(x->path), "%s/test.db", x->dir);
    cr_assert_eq(uv_loop_init(&x->loop), 0);
    cr_assert_eq(fake_redis_start(&x->loop, &x->fake, on_cmd), 0);
    x->fake.data = x;
    snprintf(url, sizeof(url), "redis://127.0.0.1:%d", x->fake.port);
    rc.url = url;
    x->svc.loop = &x->loop;
    cr_assert_eq(metrics_new(&x->svc.metrics), 0);
    cr_assert_eq(store_open(x->path, NULL, &x->svc.store), 0);
    cr_assert_eq(redis_new(&x->loop, &rc, &x->svc.redis, err, sizeof(err)), 0, "%s", err);
    oc.emits = emits;
    cr_assert_eq(outbox_new(&x->svc, &oc, &x->svc.outbox), 0);
    redis_start(x->svc.redis);
    cr_assert(RUN_UNTIL(x, redis_up, 5000));
}

static void fx_open(struct fx *x)
{
    fx_open_emits(x, NULL);
}

static void on_redis_closed(void *data)
{
    ((struct fx *)data)->closed = 1;
}

static void on_outbox_closed(void *data)
{
    struct fx *x = data;

    x->svc.outbox = NULL;
    redis_close(x->svc.redis, on_redis_closed, x);
}

static void on_outbox_stopped(void *data)
{
    struct fx *x = data;

    x->svc.outbox = NULL;
}

static int outbox_stopped(const void *arg)
{
    return ((const struct fx *)arg)->svc.outbox == NULL;
}

/* Closes the outbox alone (as a stop would), with fresh metrics for the
 * next one; the store, Redis and the fake stay. */
static void fx_stop_outbox(struct fx *x)
{
    outbox_close(x->svc.outbox, 0, on_outbox_stopped, x);
    cr_assert(RUN_UNTIL(x, outbox_stopped, 5000));
    metrics_free(x->svc.metrics);
    cr_assert_eq(metrics_new(&x->svc.metrics), 0);
}

/* A new outbox on the same database, as after a restart. */
static void fx_start_outbox(struct fx *x)
{
    cr_assert_eq(outbox_new(&x->svc, &test_outbox, &x->svc.outbox), 0);
}

static void fx_close(struct fx *x)
{
    outbox_close(x->svc.outbox, 0, on_outbox_closed, x);
    fake_redis_close(&x->fake);
    uv_run(&x->loop, UV_RUN_DEFAULT);
    cr_assert(x->closed);
    cr_assert_eq(uv_loop_close(&x->loop), 0);
    store_close(x->svc.store);
    metrics_free(x->svc.metrics);
    tmpdir_remove(x->dir);
}

/* Appends one event per stream, in one transaction. */
static void append(struct fx *x, const char *const *streams, size_t n)
{
    json_t *data = json_pack("{s:i}", "n", 1);

    cr_assert_eq(store_begin(x->svc.store), 0);
    for (size_t i = 0; i < n; i++) {
        cr_assert_lt(x->nids, MAX_EVENTS);
        cr_assert_eq(
            outbox_append(x->svc.outbox, streams[i], "test.event", data, NULL, x->ids[x->nids]), 0);
        x->nids++;
    }
    cr_assert_eq(store_commit(x->svc.store), 0);
    json_decref(data);
}

/* "published", "aside: <reason>" or "pending" for event i: pending rows
 * are the view outbox_backlog's (above the watermark, not marked). */
static const char *row_state(struct fx *x, unsigned i, char *buf, size_t len)
{
    sqlite3_stmt *st;

    cr_assert_eq(sqlite3_prepare_v2(store_db(x->svc.store),
                                    "SELECT seq IN (SELECT seq FROM outbox_backlog), "
                                    "refused_reason FROM outbox WHERE event_id = ?",
                                    -1, &st, NULL),
                 SQLITE_OK);
    sqlite3_bind_text(st, 1, x->ids[i], -1, SQLITE_STATIC);
    cr_assert_eq(sqlite3_step(st), SQLITE_ROW);
    if (sqlite3_column_int(st, 0))
        snprintf(buf, len, "pending");
    else if (sqlite3_column_type(st, 1) != SQLITE_NULL)
        snprintf(buf, len, "aside: %.40s", (const char *)sqlite3_column_text(st, 1));
    else
        snprintf(buf, len, "published");
    sqlite3_finalize(st);
    return buf;
}

/* One integer from the test's own query on the store. */
static long long query(struct fx *x, const char *sql)
{
    sqlite3_stmt *st;
    long long v;

    cr_assert_eq(sqlite3_prepare_v2(store_db(x->svc.store), sql, -1, &st, NULL), SQLITE_OK, "%s",
                 sql);
    cr_assert_eq(sqlite3_step(st), SQLITE_ROW, "%s", sql);
    v = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    return v;
}

/* Event i's seq. */
static long long seq_of(struct fx *x, unsigned i)
{
    char sql[128];

    snprintf(sql, sizeof(sql), "SELECT seq FROM outbox WHERE event_id = '%s'", x->ids[i]);
    return query(x, sql);
}

static int drained(const void *arg)
{
    const struct fx *x = arg;

    return outbox_backlog(x->svc.outbox) == 0;
}

static void exec(struct fx *x, const char *sql)
{
    cr_assert_eq(sqlite3_exec(store_db(x->svc.store), sql, NULL, NULL, NULL), SQLITE_OK, "%s: %s",
                 sql, sqlite3_errmsg(store_db(x->svc.store)));
}

TestSuite(outbox, .timeout = 20);

Test(outbox, refused_rows_are_set_aside_and_the_rest_flows_once)
{
    static const char *const streams[] = {"a", "bad", "a", "bad", "b"};
    struct fx x;
    char buf[80];

    fx_open(&x);
    append(&x, streams, 5);
    cr_assert(RUN_UNTIL(&x, drained, 5000));
    RUN_UNTIL(&x, fake_redis_never, 300); /* several backoffs: nothing goes again */
    for (unsigned i = 0; i < 5; i++)
        cr_expect_eq(x.xadds[i], 1, "event %u sent %u times", i, x.xadds[i]);
    cr_expect_str_eq(row_state(&x, 0, buf, sizeof(buf)), "published");
    cr_expect_eq(strncmp(row_state(&x, 1, buf, sizeof(buf)), "aside: WRONGTYPE", 16), 0, "%s", buf);
    cr_expect_str_eq(row_state(&x, 2, buf, sizeof(buf)), "published");
    cr_expect_eq(strncmp(row_state(&x, 3, buf, sizeof(buf)), "aside: WRONGTYPE", 16), 0, "%s", buf);
    cr_expect_str_eq(row_state(&x, 4, buf, sizeof(buf)), "published");
    cr_expect_eq(outbox_set_aside(x.svc.outbox), 2);
    fx_close(&x);
}

static int all_published(const void *arg)
{
    const struct fx *x = arg;

    return outbox_backlog(x->svc.outbox) == 0 && outbox_set_aside(x->svc.outbox) == 0;
}

Test(outbox, a_requeue_by_another_connection_is_noticed)
{
    static const char *const streams[] = {"bad", "a"};
    struct fx x;
    sqlite3 *other;
    char buf[80];

    fx_open(&x);
    append(&x, streams, 2);
    cr_assert(RUN_UNTIL(&x, drained, 5000));
    cr_assert_eq(outbox_set_aside(x.svc.outbox), 1);
    x.bad_fixed = 1; /* the operator fixed the key, and re-queues */
    cr_assert_eq(sqlite3_open(x.path, &other), SQLITE_OK);
    cr_assert_eq(sqlite3_exec(other, "UPDATE outbox SET refused_at = NULL, refused_reason = NULL",
                              NULL, NULL, NULL),
                 SQLITE_OK);
    sqlite3_close(other);
    cr_assert(RUN_UNTIL(&x, all_published, 5000), "the re-queued row was not published");
    cr_expect_str_eq(row_state(&x, 0, buf, sizeof(buf)), "published");
    /* outbox_requeue moved it above the watermark, behind the last row */
    cr_expect_eq(seq_of(&x, 0), 3);
    cr_expect_eq(x.xadds[0], 2); /* refused once, then accepted */
    cr_expect_eq(x.xadds[1], 1);
    fx_close(&x);
}

Test(outbox, a_transient_refusal_retries_that_row_alone)
{
    static const char *const streams[] = {"a", "oom", "a"};
    struct fx x;
    char buf[80];

    fx_open(&x);
    x.oom_left = 2;
    append(&x, streams, 3);
    cr_assert(RUN_UNTIL(&x, drained, 5000));
    cr_expect_eq(x.xadds[0], 1);
    cr_expect_eq(x.xadds[1], 3); /* OOM twice, then accepted */
    cr_expect_eq(x.xadds[2], 1, "accepted after the refused row: marked, not sent again");
    for (unsigned i = 0; i < 3; i++)
        cr_expect_str_eq(row_state(&x, i, buf, sizeof(buf)), "published");
    cr_expect_eq(outbox_set_aside(x.svc.outbox), 0);
    /* The first pass left event 1 pending: events 0 and 2 were marked on
     * their own. The pass that sent event 1 again moved the watermark to it,
     * and the next one moves it past event 2. */
    cr_expect_eq(query(&x, "SELECT COUNT(*) FROM outbox WHERE published_at IS NOT NULL"), 2);
    cr_expect_eq(query(&x, "SELECT MAX(last_seq) FROM outbox_passes"), seq_of(&x, 1));
    append(&x, streams, 1);
    cr_assert(RUN_UNTIL(&x, drained, 5000));
    cr_expect_eq(query(&x, "SELECT MAX(last_seq) FROM outbox_passes"), seq_of(&x, 3));
    cr_expect_eq(x.xadds[3], 1);
    fx_close(&x);
}

static int sent_three(const void *arg)
{
    const struct fx *x = arg;

    return x->xadds[0] + x->xadds[1] + x->xadds[2] >= 3;
}

/* The mark's transaction fails as on a full disk; Redis has the rows. */
Test(outbox, a_failed_mark_sends_nothing_again)
{
    static const char *const streams[] = {"a", "b", "a"};
    struct fx x;
    char buf[80];

    fx_open(&x);
    exec(&x, "CREATE TEMP TRIGGER full_disk BEFORE UPDATE ON main.outbox "
             "BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END");
    exec(&x, "CREATE TEMP TRIGGER full_disk_pass BEFORE INSERT ON main.outbox_passes "
             "BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END");
    append(&x, streams, 3);
    cr_assert(RUN_UNTIL(&x, sent_three, 5000));
    RUN_UNTIL(&x, fake_redis_never, 400); /* backoffs 50 + 100 + 200 ms: three failed marks */
    for (unsigned i = 0; i < 3; i++) {
        cr_expect_eq(x.xadds[i], 1, "event %u sent %u times", i, x.xadds[i]);
        cr_expect_str_eq(row_state(&x, i, buf, sizeof(buf)), "pending");
    }
    cr_expect_eq(outbox_backlog(x.svc.outbox), 3);
    exec(&x, "DROP TRIGGER full_disk");
    exec(&x, "DROP TRIGGER full_disk_pass");
    cr_assert(RUN_UNTIL(&x, drained, 10000), "never marked once the disk had room");
    for (unsigned i = 0; i < 3; i++) {
        cr_expect_eq(x.xadds[i], 1, "event %u sent %u times", i, x.xadds[i]);
        cr_expect_str_eq(row_state(&x, i, buf, sizeof(buf)), "published");
    }
    fx_close(&x);
}

/* DESIGN.md §12: a module emits only what it declared, as it declared it. */
Test(outbox, only_declared_types_with_valid_payloads_are_appended)
{
    static const struct spec_field fields[] = {SPEC_POSITIVE("n", 10), SPEC_END};
    static const struct stream_type emits[] = {
        {.stream = "test.events", .type = "test.event", .fields = fields},
        {.stream = NULL},
    };
    struct fx x;
    json_t *ok = json_pack("{s:i}", "n", 1), *bad = json_pack("{s:i}", "n", 11);

    fx_open_emits(&x, emits);
    cr_assert_eq(store_begin(x.svc.store), 0);
    cr_expect_eq(outbox_append(x.svc.outbox, "test.events", "test.other", ok, NULL, NULL), -EINVAL,
                 "an undeclared type");
    cr_expect_eq(outbox_append(x.svc.outbox, "other.events", "test.event", ok, NULL, NULL), -EINVAL,
                 "a declared type on another stream");
    cr_expect_eq(outbox_append(x.svc.outbox, "test.events", "test.event", bad, NULL, NULL), -EINVAL,
                 "a payload past its spec");
    cr_expect_eq(outbox_append(x.svc.outbox, "test.events", "test.event", ok, NULL, NULL), 0);
    cr_expect_eq(outbox_emit(x.svc.outbox, &emits[0], json_pack("{s:i}", "n", 2), NULL, NULL), 0);
    cr_expect_eq(outbox_emit(x.svc.outbox, &emits[0], NULL, NULL, NULL), -ENOMEM);
    cr_assert_eq(store_commit(x.svc.store), 0);
    cr_expect(RUN_UNTIL(&x, drained, 5000));
    cr_expect_eq(outbox_backlog(x.svc.outbox), 0);
    json_decref(ok);
    json_decref(bad);
    fx_close(&x);
}

static int sent_n(const void *arg, unsigned n)
{
    const struct fx *x = arg;

    return x->nsent >= n;
}

static int sent_one(const void *arg)
{
    return sent_n(arg, 1);
}

static int sent_three_xadds(const void *arg)
{
    return sent_n(arg, 3);
}

static int sent_six_xadds(const void *arg)
{
    return sent_n(arg, 6);
}

static int sent_five_xadds(const void *arg)
{
    return sent_n(arg, 5);
}

/* Opens x and sends two passes: event 0 (stream "slow", whose reply and
 * every one after it the fake holds), then events 1 and 2 committed while
 * the first pass waits. */
static void send_two_passes(struct fx *x)
{
    static const char *const first[] = {"slow"}, *const second[] = {"a", "b"};

    fx_open(x);
    x->hold_slow = 1;
    append(x, first, 1);
    cr_assert(RUN_UNTIL(x, sent_one, 5000));
    append(x, second, 2);
    cr_assert(RUN_UNTIL(x, sent_three_xadds, 5000),
              "the second commit's rows waited for the first pass's replies");
}

/* A commit's rows go out while an earlier pass still waits for its
 * replies: in seq order, each once. */
Test(outbox, passes_are_pipelined_in_order)
{
    struct fx x;
    char buf[80];

    send_two_passes(&x);
    for (unsigned i = 0; i < 3; i++) {
        cr_expect_eq(x.sent[i], (int)i, "XADD %u was event %d", i, x.sent[i]);
        cr_expect_str_eq(row_state(&x, i, buf, sizeof(buf)), "pending", "no reply yet");
    }
    fake_redis_release(&x.fake);
    cr_assert(RUN_UNTIL(&x, drained, 5000));
    for (unsigned i = 0; i < 3; i++) {
        cr_expect_eq(x.xadds[i], 1, "event %u sent %u times", i, x.xadds[i]);
        cr_expect_str_eq(row_state(&x, i, buf, sizeof(buf)), "published");
    }
    fx_close(&x);
}

/* The connection drops with two passes unanswered: once both are settled
 * the relay rewinds and sends every row again, in seq order. */
Test(outbox, lost_replies_of_pipelined_passes_go_again_in_order)
{
    struct fx x;
    char buf[80];

    send_two_passes(&x);
    fake_redis_drop_clients(&x.fake);
    x.fake.holding = 0;
    cr_assert(RUN_UNTIL(&x, sent_six_xadds, 5000), "the rows were not sent again");
    cr_assert(RUN_UNTIL(&x, drained, 5000));
    for (unsigned i = 0; i < 6; i++)
        cr_expect_eq(x.sent[i], (int)(i % 3), "XADD %u was event %d", i, x.sent[i]);
    for (unsigned i = 0; i < 3; i++) {
        cr_expect_eq(x.xadds[i], 2, "event %u sent %u times", i, x.xadds[i]);
        cr_expect_str_eq(row_state(&x, i, buf, sizeof(buf)), "published");
    }
    cr_expect_eq(x.nsent, 6, "%u XADDs", x.nsent);
    fx_close(&x);
}

static int is_closed(const void *arg)
{
    return ((const struct fx *)arg)->closed;
}

/* Stopping with a flush budget: a row Redis refuses for now is tried once,
 * not again every round trip until the budget runs out. */
Test(outbox, a_refusal_while_closing_ends_the_drain)
{
    static const char *const streams[] = {"oom"};
    struct fx x;

    fx_open(&x);
    x.oom_left = 1000;
    append(&x, streams, 1);
    outbox_close(x.svc.outbox, 2000, on_outbox_closed, &x);
    cr_assert(RUN_UNTIL(&x, is_closed, 1000), "the drain went on");
    fake_redis_close(&x.fake);
    uv_run(&x.loop, UV_RUN_DEFAULT);
    cr_expect_eq(x.xadds[0], 1, "the refused row was sent %u times while closing", x.xadds[0]);
    cr_assert_eq(uv_loop_close(&x.loop), 0);
    store_close(x.svc.store);
    metrics_free(x.svc.metrics);
    tmpdir_remove(x.dir);
}

/* Event i's entry id as outbox_entry_id finds it, or "-". */
static const char *entry_of(struct fx *x, unsigned i, char *buf, size_t len)
{
    if (outbox_entry_id(x->svc.outbox, x->ids[i], buf, len) < 0)
        snprintf(buf, len, "-");
    return buf;
}

/* Settled passes move the watermark: no row is written when it is
 * published, the entry ids Redis gave are found, and a restart sends
 * nothing again. */
Test(outbox, published_rows_are_recorded_per_pass_and_stay_published)
{
    static const char *const first[] = {"a", "b", "a"}, *const second[] = {"b", "a"};
    struct fx x;
    char buf[80], want[32];

    fx_open(&x);
    append(&x, first, 3);
    cr_assert(RUN_UNTIL(&x, drained, 5000));
    append(&x, second, 2);
    cr_assert(RUN_UNTIL(&x, drained, 5000));
    cr_expect_eq(query(&x, "SELECT COUNT(*) FROM outbox WHERE published_at IS NOT NULL"), 0,
                 "rows were marked one by one");
    cr_expect_eq(query(&x, "SELECT MAX(last_seq) FROM outbox_passes"), 5);
    cr_expect_eq(query(&x, "SELECT COUNT(*) FROM outbox_backlog"), 0);
    for (unsigned i = 0; i < 5; i++) {
        snprintf(want, sizeof(want), "%u-0", i + 1); /* the fake's ids, in the order sent */
        cr_expect_str_eq(entry_of(&x, i, buf, sizeof(buf)), want, "event %u", i);
    }
    fx_stop_outbox(&x);
    fx_start_outbox(&x);
    cr_expect_eq(outbox_backlog(x.svc.outbox), 0);
    RUN_UNTIL(&x, fake_redis_never, 1300); /* past a recovery sweep */
    for (unsigned i = 0; i < 5; i++)
        cr_expect_eq(x.xadds[i], 1, "event %u sent %u times", i, x.xadds[i]);
    fx_close(&x);
}

/* A table from a build that marked every row: the watermark starts below
 * its oldest pending row, and only the pending rows go out. */
Test(outbox, a_table_marked_row_by_row_sends_only_its_pending_rows)
{
    struct fx x;
    char buf[80];

    fx_open(&x);
    fx_stop_outbox(&x);
    exec(&x, "DROP VIEW outbox_backlog; DROP TRIGGER outbox_requeue; DROP TABLE outbox_passes;"
             "CREATE INDEX outbox_pending ON outbox(seq) "
             "WHERE published_at IS NULL AND refused_at IS NULL;"
             "INSERT INTO outbox (stream, event_id, type, data, created_at, published_at, entry_id)"
             " VALUES ('a', 'e0', 't', '{}', 1, 2, '100-0'), ('a', 'e1', 't', '{}', 1, NULL, NULL),"
             " ('a', 'e2', 't', '{}', 1, 2, '101-0'), ('a', 'e3', 't', '{}', 1, NULL, NULL);");
    for (unsigned i = 0; i < 4; i++)
        snprintf(x.ids[i], sizeof(x.ids[i]), "e%u", i);
    x.nids = 4;
    fx_start_outbox(&x);
    cr_expect_eq(outbox_backlog(x.svc.outbox), 2);
    cr_expect_eq(query(&x, "SELECT MAX(last_seq) FROM outbox_passes"), 1);
    cr_expect_eq(query(&x, "SELECT COUNT(*) FROM sqlite_schema WHERE name = 'outbox_pending'"), 0);
    cr_assert(RUN_UNTIL(&x, drained, 5000), "the pending rows were not sent");
    cr_expect_eq(x.xadds[0], 0);
    cr_expect_eq(x.xadds[1], 1);
    cr_expect_eq(x.xadds[2], 0);
    cr_expect_eq(x.xadds[3], 1);
    for (unsigned i = 0; i < 4; i++)
        cr_expect_str_eq(row_state(&x, i, buf, sizeof(buf)), "published", "event %u", i);
    cr_expect_eq(query(&x, "SELECT MAX(last_seq) FROM outbox_passes"), 4);
    cr_expect_str_eq(entry_of(&x, 0, buf, sizeof(buf)), "100-0");
    cr_expect_str_eq(entry_of(&x, 1, buf, sizeof(buf)), "1-0");
    cr_expect_str_eq(entry_of(&x, 3, buf, sizeof(buf)), "2-0");
    fx_close(&x);
}

/* The first of two pipelined passes fails to record (its pass row, as on a
 * full disk) while the second one records its rows one by one: once the
 * first is recorded, the relay starts again from the watermark, so the
 * passes after them move it again instead of marking every row. */
Test(outbox, after_a_failed_record_the_watermark_moves_again)
{
    static const char *const third[] = {"a"};
    struct fx x;
    char buf[80];

    send_two_passes(&x);
    exec(&x, "CREATE TEMP TRIGGER full_disk BEFORE INSERT ON main.outbox_passes "
             "WHEN NEW.last_seq = 1 BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END");
    fake_redis_release(&x.fake);
    cr_assert(RUN_UNTIL(&x, sent_three_xadds, 5000));
    RUN_UNTIL(&x, fake_redis_never, 200); /* a failed record or two */
    cr_expect_str_eq(row_state(&x, 0, buf, sizeof(buf)), "pending", "not recorded yet");
    cr_expect_eq(query(&x, "SELECT COUNT(*) FROM outbox WHERE published_at IS NOT NULL"), 2,
                 "the second pass marked its rows one by one");
    exec(&x, "DROP TRIGGER full_disk");
    cr_assert(RUN_UNTIL(&x, drained, 5000), "never recorded once the disk had room");
    append(&x, third, 1);
    cr_assert(RUN_UNTIL(&x, drained, 5000));
    cr_expect_eq(query(&x, "SELECT MAX(last_seq) FROM outbox_passes"), 4);
    cr_expect_eq(query(&x, "SELECT COUNT(*) FROM outbox WHERE published_at IS NOT NULL"), 2,
                 "the pass after them marked its row one by one");
    for (unsigned i = 0; i < 4; i++) {
        cr_expect_eq(x.xadds[i], 1, "event %u sent %u times", i, x.xadds[i]);
        cr_expect_str_eq(row_state(&x, i, buf, sizeof(buf)), "published", "event %u", i);
    }
    fx_close(&x);
}

/* As a service runs it: the store groups each loop iteration's
 * transactions. Passes answered together share a group and build on its
 * planned watermark; a pass answered later builds on the durable one. No
 * row is marked one by one, and nothing goes twice. */
Test(outbox, a_grouped_store_moves_the_watermark_with_every_pass)
{
    static const char *const more[] = {"a", "b"};
    struct fx x;

    send_two_passes(&x);
    cr_assert_eq(store_group_commit(x.svc.store, &x.loop, NULL), 0);
    fake_redis_release(&x.fake);
    cr_assert(RUN_UNTIL(&x, drained, 5000));
    append(&x, more, 2); /* its own group, then its own pass */
    cr_assert(RUN_UNTIL(&x, sent_five_xadds, 5000));
    cr_assert(RUN_UNTIL(&x, drained, 5000));
    cr_expect_eq(query(&x, "SELECT COUNT(*) FROM outbox WHERE published_at IS NOT NULL"), 0,
                 "rows were marked one by one");
    cr_expect_eq(query(&x, "SELECT MAX(last_seq) FROM outbox_passes"), 5);
    for (unsigned i = 0; i < 5; i++)
        cr_expect_eq(x.xadds[i], 1, "event %u sent %u times", i, x.xadds[i]);
    store_group_end(x.svc.store);
    fx_close(&x);
}

static int pruned_to_one_row(const void *arg)
{
    struct fx *x = (struct fx *)arg;

    return query(x, "SELECT COUNT(*) FROM outbox") == 1;
}

/* With no retention, a sweep prunes every published row but the newest,
 * with their passes of one row each, and keeps the newest pass, which holds
 * the watermark: what comes after is published, and nothing goes twice. */
Test(outbox, a_prune_keeps_the_newest_row_and_pass_and_the_watermark)
{
    static const char *const one[] = {"a"};
    struct fx x;

    test_outbox.retention_ms = 0;
    fx_open(&x);
    test_outbox.retention_ms = 3600000;
    for (unsigned i = 0; i < MAX_EVENTS - 1; i++) {
        append(&x, one, 1);
        cr_assert(RUN_UNTIL(&x, drained, 5000));
    }
    cr_assert_geq(query(&x, "SELECT COUNT(*) FROM outbox_passes"), 2);
    cr_assert(RUN_UNTIL(&x, pruned_to_one_row, 5000), "not pruned");
    cr_expect_eq(query(&x, "SELECT MAX(seq) FROM outbox"), MAX_EVENTS - 1);
    cr_expect_eq(query(&x, "SELECT COUNT(*) FROM outbox_passes"), 1);
    cr_expect_eq(query(&x, "SELECT last_seq FROM outbox_passes"), MAX_EVENTS - 1);
    append(&x, one, 1);
    cr_assert(RUN_UNTIL(&x, drained, 5000));
    cr_expect_eq(query(&x, "SELECT MAX(last_seq) FROM outbox_passes"), MAX_EVENTS);
    for (unsigned i = 0; i < MAX_EVENTS; i++)
        cr_expect_eq(x.xadds[i], 1, "event %u sent %u times", i, x.xadds[i]);
    fx_close(&x);
}
