/* saga.c -- orders as the orchestrator of the order saga (DESIGN.md §8).
 *
 *   PENDING --stock.reserved--> AWAITING_PAYMENT (sends payment.charge)
 *           --stock.rejected--> REJECTED (order.rejected)
 *   AWAITING_PAYMENT --payment.succeeded--> CONFIRMED (stock.commit, order.confirmed)
 *                    --payment.failed--> CANCELLED (stock.release, order.cancelled)
 *   PENDING or AWAITING_PAYMENT, no reply within SAGA_TIMEOUT_MS
 *           --> CANCELLED, reason timeout (stock.release, order.cancelled)
 *
 * A reply to a finished saga is compensated: a late stock.reserved gets a
 * stock.release, a late payment.succeeded a payment.refund. Replies that
 * change nothing (a repeated stock.reserved, a payment.failed after a
 * timeout, the acknowledgements stock.released / stock.committed /
 * payment.refunded) are recorded in the timeline when they concern a known
 * order, and otherwise acked.
 *
 * Every transition is one local transaction -- the consumer's -- with its
 * outbox rows and its timeline steps: the handler sends its events and
 * decides the order's next state (move), then save writes the order's row
 * once, the new state and the steps appended to its timeline together.
 * Deadlines live in the orders table
 * (deadline_ms, NULL once the order is final), so a sweep timer re-arms
 * them from the database after a restart. Loop thread only. */
#include "orders.h"

#include <errno.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

#include <jansson.h>
#include <sqlite3.h>

#include <ripple/clock.h>
#include <ripple/config.h>
#include <ripple/log.h>
#include <ripple/metrics.h>
#include <ripple/store.h>
#include <ripple/trace.h>
#include <ripple/stream_consumer.h>
#include <ripple/streams.h>

#define SAGA_SWEEP_BATCH 100

/* What a loaded order looks like to the saga, and the move a transition
 * makes of it until save writes it. */
struct saga_order {
    char id[IDS_UUID_LEN + 1];
    char traceparent[TRACE_PARENT_LEN + 1]; /* the order's, from its creation; "" if none */
    char user_id[IDS_UUID_LEN + 1];
    char status[24];
    char created_at[CLOCK_ISO8601_LEN + 1]; /* ISO-8601 UTC, ms: clock_iso8601 at creation */
    long long amount_cents;                 /* 0 while unknown */
    int64_t timeline_bytes;                 /* the row's timeline as loaded */
    int moved;                              /* move ran: status and what follows are new */
    long long new_amount_cents;             /* 0 keeps amount_cents */
    const char *reason;                     /* borrowed until save; NULL for none */
    int64_t deadline_ms;                    /* 0 once final */
};

static int is_final(const struct saga_order *so)
{
    return strcmp(so->status, ORDERS_CONFIRMED) == 0 || strcmp(so->status, ORDERS_REJECTED) == 0 ||
           strcmp(so->status, ORDERS_CANCELLED) == 0;
}

/* ---------------------------------------------------------------------------
 * The database side of a transition
 * ------------------------------------------------------------------------- */

/* Column i as text; "" for NULL (the schema says NOT NULL, but an
 * allocation failure inside SQLite also reads as NULL). */
static const char *col(struct sqlite3_stmt *st, int i)
{
    const char *s = (const char *)sqlite3_column_text(st, i);

    return s != NULL ? s : "";
}

/* Returns 0, -ENOENT or -EIO (logged). */
static int load(struct orders *o, const char *id, struct saga_order *so)
{
    struct sqlite3_stmt *st = o->saga_load;
    int rc;

    sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        snprintf(so->id, sizeof(so->id), "%s", id);
        snprintf(so->status, sizeof(so->status), "%s", col(st, 0));
        snprintf(so->user_id, sizeof(so->user_id), "%s", col(st, 1));
        so->amount_cents = sqlite3_column_int64(st, 2);
        snprintf(so->traceparent, sizeof(so->traceparent), "%s", col(st, 3));
        snprintf(so->created_at, sizeof(so->created_at), "%s", col(st, 4));
        so->timeline_bytes = sqlite3_column_int64(st, 5);
        so->moved = 0;
        rc = 0;
    } else if (rc == SQLITE_DONE) {
        rc = -ENOENT;
    } else {
        log_error("orders: load order %s: %s", id, store_errmsg(o->svc->store));
        rc = -EIO;
    }
    store_reset(st);
    return rc;
}

/* ms since the epoch of a 2026-11-26T04:24:11.123Z (clock_iso8601's form),
 * or -1 when s is not one. */
static int64_t iso8601_ms(const char *s)
{
    static const unsigned char digit[] = {0,  1,  2,  3,  5,  6,  8,  9, 11,
                                          12, 14, 15, 17, 18, 20, 21, 22};
    struct tm tm = {0};
    int v[sizeof(digit)];
    time_t t;

    if (strlen(s) != CLOCK_ISO8601_LEN || s[4] != '-' || s[7] != '-' || s[10] != 'T' ||
        s[13] != ':' || s[16] != ':' || s[19] != '.' || s[23] != 'Z')
        return -1;
    for (size_t i = 0; i < sizeof(digit); i++) {
        if (s[digit[i]] < '0' || s[digit[i]] > '9')
            return -1;
        v[i] = s[digit[i]] - '0';
    }
    tm.tm_year = v[0] * 1000 + v[1] * 100 + v[2] * 10 + v[3] - 1900;
    tm.tm_mon = v[4] * 10 + v[5] - 1;
    tm.tm_mday = v[6] * 10 + v[7];
    tm.tm_hour = v[8] * 10 + v[9];
    tm.tm_min = v[10] * 10 + v[11];
    tm.tm_sec = v[12] * 10 + v[13];
    if ((t = timegm(&tm)) == (time_t)-1)
        return -1;
    return (int64_t)t * 1000 + (int64_t)(v[14] * 100 + v[15] * 10 + v[16]);
}

/* orders_saga_seconds{outcome}: the order's created_at -> the transition
 * that makes it final (both the wall clock, clock.h), observed once the
 * transition's UPDATE succeeded, before its commit: a commit that fails
 * rolls the order back and its redelivery observes it a second time (rare,
 * and only then). created_at is whole ms (floored); a clock step back
 * counts as 0. Orders rejected at creation (unknown user) never reach the
 * saga and are not observed. */
static void observe_final(struct orders *o, const struct saga_order *so, const char *status)
{
    int i = strcmp(status, ORDERS_CONFIRMED) == 0  ? 0
            : strcmp(status, ORDERS_REJECTED) == 0 ? 1
                                                   : 2;
    int64_t created = iso8601_ms(so->created_at), now = clock_now_us();

    if (o->saga_seconds[i] == NULL || created < 0)
        return;
    metrics_histogram_observe(o->saga_seconds[i],
                              now > created * 1000 ? (double)(now - created * 1000) / 1e6 : 0.0);
}

/* Moves so to status (amount_cents 0 keeps it; reason, borrowed until
 * save, may be NULL); a non-final status gets a new deadline. */
static void move(struct orders *o, struct saga_order *so, const char *status,
                 long long amount_cents, const char *reason)
{
    snprintf(so->status, sizeof(so->status), "%s", status);
    if (amount_cents > 0)
        so->amount_cents = amount_cents;
    so->new_amount_cents = amount_cents;
    so->reason = reason;
    so->deadline_ms = is_final(so) ? 0 : orders_saga_deadline(o);
    so->moved = 1;
}

/* Writes the transition: one UPDATE of the order's row appends the steps
 * in o->steps to its timeline and, when move ran, sets the new state. A
 * final state is observed in orders_saga_seconds. An acknowledgement (no
 * move, nothing sent) to a full timeline (ORDERS_TIMELINE_MAX) is logged,
 * not stored. */
static int save(struct orders *o, struct saga_order *so, const char *at)
{
    struct store *st = o->svc->store;
    int rc;

    if (o->steps.len == 0 && !so->moved)
        return 0;
    if ((rc = orders_steps_check(o, so->id)) < 0)
        return rc;
    if (!so->moved && o->steps_sent == 0 &&
        so->timeline_bytes + (int64_t)o->steps.len > ORDERS_TIMELINE_MAX) {
        log_write(LOG_LEVEL_WARN, so->id,
                  "order %s: its timeline is full (%lld bytes): %.*s not recorded", so->id,
                  (long long)so->timeline_bytes, (int)(o->steps.len < 300 ? o->steps.len : 300),
                  o->steps.p);
        return 0;
    }
    if (so->moved)
        rc = store_exec(st, o->saga_update, "orders: move an order", "sSsIsIs", so->id, o->steps.p,
                        o->steps.len, so->status, (int64_t)so->new_amount_cents, so->reason,
                        so->deadline_ms, at);
    else
        rc = store_exec(st, o->saga_append, "orders: add to a timeline", "sS", so->id, o->steps.p,
                        o->steps.len);
    if (rc == 0 && so->moved && is_final(so))
        observe_final(o, so, so->status);
    return rc;
}

int64_t orders_saga_deadline(const struct orders *o)
{
    return clock_now_ms() + (int64_t)o->saga_timeout_ms;
}

static int send_release(struct orders *o, const struct saga_order *so, const char *at)
{
    return orders_emit(o, so->id, ORDERS_OUT_RELEASE, json_pack("{s:s}", "order_id", so->id),
                       ORDERS_STEP_RELEASE_STOCK, at);
}

static int send_final(struct orders *o, const struct saga_order *so, enum orders_out out,
                      const char *reason, const char *step, const char *at)
{
    json_t *data = reason ? json_pack("{s:s, s:s, s:s}", "order_id", so->id, "user_id", so->user_id,
                                      "reason", reason)
                          : json_pack("{s:s, s:s, s:I}", "order_id", so->id, "user_id", so->user_id,
                                      "amount_cents", (json_int_t)so->amount_cents);

    return orders_emit(o, so->id, out, data, step, at);
}

/* Records the event that arrived as the order's next step. */
static void received(struct orders *o, const struct stream_msg *msg, const char *step,
                     const char *at)
{
    orders_step_add(o, step, msg->type, msg->id, msg->stream, msg->entry_id, at);
}

/* ---------------------------------------------------------------------------
 * Replies from inventory and payments
 * ------------------------------------------------------------------------- */

static int on_stock_reserved(struct orders *o, struct saga_order *so, struct stream_msg *msg,
                             const char *at)
{
    json_int_t amount = json_integer_value(json_object_get(msg->data, "amount_cents"));

    if (strcmp(so->status, ORDERS_PENDING) == 0) {
        received(o, msg, ORDERS_STEP_STOCK_RESERVED, at);
        move(o, so, ORDERS_AWAITING_PAYMENT, (long long)amount, NULL);
        return orders_emit(o, so->id, ORDERS_OUT_CHARGE,
                           json_pack("{s:s, s:s, s:I}", "order_id", so->id, "user_id", so->user_id,
                                     "amount_cents", amount),
                           ORDERS_STEP_CHARGE_PAYMENT, at);
    }
    if (strcmp(so->status, ORDERS_CANCELLED) == 0 || strcmp(so->status, ORDERS_REJECTED) == 0) {
        /* The saga is over (a timeout): give the stock back. */
        log_write(LOG_LEVEL_INFO, so->id, "late stock.reserved for a %s order: releasing",
                  so->status);
        received(o, msg, ORDERS_STEP_LATE_STOCK_RESERVED, at);
        return send_release(o, so, at);
    }
    return STREAM_CONSUMER_SKIP; /* a repeat: the order moved on already */
}

static int on_stock_rejected(struct orders *o, struct saga_order *so, struct stream_msg *msg,
                             const char *at)
{
    const char *reason = json_string_value(json_object_get(msg->data, "reason"));

    if (strcmp(so->status, ORDERS_PENDING) != 0)
        return STREAM_CONSUMER_SKIP;
    received(o, msg, ORDERS_STEP_STOCK_REJECTED, at);
    move(o, so, ORDERS_REJECTED, 0, reason);
    log_write(LOG_LEVEL_INFO, so->id, "order rejected: %s", reason);
    return send_final(o, so, ORDERS_OUT_REJECTED, reason, ORDERS_STEP_REJECTED, at);
}

static int on_payment_succeeded(struct orders *o, struct saga_order *so, struct stream_msg *msg,
                                const char *at)
{
    int rc;

    if (strcmp(so->status, ORDERS_AWAITING_PAYMENT) == 0) {
        received(o, msg, ORDERS_STEP_PAYMENT_SUCCEEDED, at);
        move(o, so, ORDERS_CONFIRMED, 0, NULL);
        if ((rc = orders_emit(o, so->id, ORDERS_OUT_COMMIT, json_pack("{s:s}", "order_id", so->id),
                              ORDERS_STEP_COMMIT_STOCK, at)) < 0)
            return rc;
        log_write(LOG_LEVEL_INFO, so->id, "order confirmed: %lld cents", so->amount_cents);
        return send_final(o, so, ORDERS_OUT_CONFIRMED, NULL, ORDERS_STEP_CONFIRMED, at);
    }
    if (strcmp(so->status, ORDERS_CANCELLED) == 0 || strcmp(so->status, ORDERS_REJECTED) == 0) {
        /* Charged for an order that is over: pay it back. */
        log_write(LOG_LEVEL_INFO, so->id, "late payment.succeeded for a %s order: refunding",
                  so->status);
        received(o, msg, ORDERS_STEP_LATE_PAYMENT_SUCCEEDED, at);
        return orders_emit(o, so->id, ORDERS_OUT_REFUND, json_pack("{s:s}", "order_id", so->id),
                           ORDERS_STEP_REFUND_PAYMENT, at);
    }
    return STREAM_CONSUMER_SKIP;
}

static int on_payment_failed(struct orders *o, struct saga_order *so, struct stream_msg *msg,
                             const char *at)
{
    const char *reason = json_string_value(json_object_get(msg->data, "reason"));
    int rc;

    if (strcmp(so->status, ORDERS_AWAITING_PAYMENT) != 0)
        return STREAM_CONSUMER_SKIP; /* nothing was charged: nothing to undo */
    received(o, msg, ORDERS_STEP_PAYMENT_FAILED, at);
    move(o, so, ORDERS_CANCELLED, 0, reason);
    if ((rc = send_release(o, so, at)) < 0)
        return rc;
    log_write(LOG_LEVEL_INFO, so->id, "order cancelled: %s", reason);
    return send_final(o, so, ORDERS_OUT_CANCELLED, reason, ORDERS_STEP_CANCELLED, at);
}

typedef int (*saga_handler)(struct orders *o, struct saga_order *so, struct stream_msg *msg,
                            const char *at);

/* The prologue of every reply: the order it is about, then fn. A reply for
 * an order this service does not know is skipped. */
static int reply(struct stream_msg *msg, struct orders *o, saga_handler fn)
{
    char id[IDS_UUID_LEN + 1], at[CLOCK_ISO8601_LEN + 1];
    struct saga_order so;
    int rc;

    if (stream_msg_uuid(msg, "order_id", id) < 0)
        return STREAM_CONSUMER_SKIP;
    rc = load(o, id, &so);
    if (rc == -ENOENT) {
        log_write(LOG_LEVEL_DEBUG, id, "%s for an order we do not know: skipped", msg->type);
        return STREAM_CONSUMER_SKIP;
    }
    if (rc < 0 || (rc = clock_iso8601(at, sizeof(at))) < 0)
        return rc;
    orders_steps_reset(o);
    if ((rc = fn(o, &so, msg, at)) == 0)
        rc = save(o, &so, at);
    return rc;
}

int orders_on_stock_reserved(struct stream_msg *msg, void *data)
{
    return reply(msg, data, on_stock_reserved);
}

int orders_on_stock_rejected(struct stream_msg *msg, void *data)
{
    return reply(msg, data, on_stock_rejected);
}

int orders_on_payment_succeeded(struct stream_msg *msg, void *data)
{
    return reply(msg, data, on_payment_succeeded);
}

int orders_on_payment_failed(struct stream_msg *msg, void *data)
{
    return reply(msg, data, on_payment_failed);
}

/* The acknowledgements of compensations and commits: timeline only. */
static int on_released(struct orders *o, struct saga_order *so, struct stream_msg *msg,
                       const char *at)
{
    (void)so;
    received(o, msg, ORDERS_STEP_STOCK_RELEASED, at);
    return 0;
}

static int on_committed(struct orders *o, struct saga_order *so, struct stream_msg *msg,
                        const char *at)
{
    (void)so;
    received(o, msg, ORDERS_STEP_STOCK_COMMITTED, at);
    return 0;
}

static int on_refunded(struct orders *o, struct saga_order *so, struct stream_msg *msg,
                       const char *at)
{
    (void)so;
    received(o, msg, ORDERS_STEP_PAYMENT_REFUNDED, at);
    return 0;
}

int orders_on_stock_released(struct stream_msg *msg, void *data)
{
    return reply(msg, data, on_released);
}

int orders_on_stock_committed(struct stream_msg *msg, void *data)
{
    return reply(msg, data, on_committed);
}

int orders_on_payment_refunded(struct stream_msg *msg, void *data)
{
    return reply(msg, data, on_refunded);
}

/* ---------------------------------------------------------------------------
 * Deadlines
 * ------------------------------------------------------------------------- */

/* Cancels one order whose step had no reply in time. */
static int time_out(struct orders *o, const char *id, const char *at)
{
    struct saga_order so;
    char span[TRACE_PARENT_LEN + 1];
    int rc = load(o, id, &so);

    if (rc < 0 || is_final(&so))
        return rc == -ENOENT ? 0 : rc;
    /* nothing arrived: the timeout continues the order's own trace */
    trace_child(so.traceparent[0] ? so.traceparent : NULL, span);
    trace_set(span);
    log_write(LOG_LEVEL_INFO, so.id, "order %s timed out after %lu ms: cancelling", so.status,
              o->saga_timeout_ms);
    orders_steps_reset(o);
    move(o, &so, ORDERS_CANCELLED, 0, ORDERS_REASON_TIMEOUT);
    if ((rc = send_release(o, &so, at)) < 0 ||
        (rc = send_final(o, &so, ORDERS_OUT_CANCELLED, ORDERS_REASON_TIMEOUT, ORDERS_STEP_TIMED_OUT,
                         at)) < 0)
        return rc;
    return save(o, &so, at);
}

/* Collects up to SAGA_SWEEP_BATCH overdue order ids into ids. */
static size_t overdue(struct orders *o, char ids[][IDS_UUID_LEN + 1])
{
    struct sqlite3_stmt *st = o->saga_due;
    size_t n = 0;

    sqlite3_bind_int64(st, 1, clock_now_ms());
    sqlite3_bind_int(st, 2, SAGA_SWEEP_BATCH);
    while (n < SAGA_SWEEP_BATCH && sqlite3_step(st) == SQLITE_ROW)
        snprintf(ids[n++], IDS_UUID_LEN + 1, "%s", col(st, 0));
    store_reset(st);
    return n;
}

static void on_sweep(uv_timer_t *t)
{
    struct orders *o = t->data;
    char ids[SAGA_SWEEP_BATCH][IDS_UUID_LEN + 1], at[CLOCK_ISO8601_LEN + 1];
    size_t n;
    int rc = 0;

    log_scope(o->svc->module->name);
    if (o->stopping || store_in_txn(o->svc->store) || (n = overdue(o, ids)) == 0)
        return;
    if (clock_iso8601(at, sizeof(at)) < 0 || store_begin(o->svc->store) < 0)
        return;
    for (size_t i = 0; i < n && rc == 0; i++)
        rc = time_out(o, ids[i], at);
    trace_set(NULL);
    if (rc < 0) {
        log_error("orders: cancelling overdue orders failed: %s", strerror(-rc));
        store_rollback(o->svc->store);
        return;
    }
    if (store_commit(o->svc->store) < 0)
        log_error("orders: cancelling overdue orders: commit failed");
}

/* ---------------------------------------------------------------------------
 * Life cycle
 * ------------------------------------------------------------------------- */

static void on_timer_closed(uv_handle_t *h)
{
    struct orders *o = h->data;
    service_stop_done_cb done = o->saga_stop_done;
    struct service *svc = o->svc;

    orders_unref(o);
    done(svc);
}

static void on_saga_stop(struct service *svc, void *data, service_stop_done_cb done)
{
    struct orders *o = data;

    (void)svc;
    o->saga_stop_done = done;
    uv_close((uv_handle_t *)&o->saga_timer, on_timer_closed);
}

/* The buckets of orders_saga_seconds: ms steps where the saga's p50/p99 live,
 * then up to SAGA_TIMEOUT_MS's default and beyond. */
static const double saga_bounds[] = {0.001, 0.002, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075,
                                     0.1,   0.15,  0.25,  0.5,  1,    2.5,   10,   30};

static void saga_metrics(struct orders *o)
{
    static const char *const labels[] = {"outcome=\"confirmed\"", "outcome=\"rejected\"",
                                         "outcome=\"cancelled\""};

    for (size_t i = 0; i < ARRAY_SIZE(labels); i++)
        o->saga_seconds[i] = metrics_histogram(
            o->svc->metrics, "orders_saga_seconds",
            "Order created -> final (confirmed, rejected or cancelled by the saga), seconds",
            labels[i], saga_bounds, ARRAY_SIZE(saga_bounds));
}

/* timeline, a JSON array, with the steps ?2 ("{...},{...}") appended: text
 * spliced, not parsed -- the row's old timeline is copied, never read. */
#define SAGA_APPEND                                                                                \
    "timeline = rtrim(timeline, ']') || CASE timeline WHEN '[]' THEN '' ELSE ',' END || ?2 || ']'"

static int saga_prepare(struct orders *o)
{
    struct store *st = o->svc->store;
    int rc;

    if ((rc = store_prepare(st,
                            "SELECT status, user_id, amount_cents, traceparent, created_at, "
                            "length(CAST(timeline AS BLOB)) FROM orders WHERE id = ?",
                            &o->saga_load)) < 0 ||
        (rc = store_prepare(st,
                            "UPDATE orders SET " SAGA_APPEND ", status = ?3, amount_cents = "
                            "COALESCE(NULLIF(?4, 0), amount_cents), reason = ?5, "
                            "deadline_ms = NULLIF(?6, 0), updated_at = ?7 WHERE id = ?1",
                            &o->saga_update)) < 0 ||
        (rc = store_prepare(st, "UPDATE orders SET " SAGA_APPEND " WHERE id = ?1",
                            &o->saga_append)) < 0 ||
        (rc = store_prepare(st,
                            "SELECT id FROM orders WHERE deadline_ms IS NOT NULL AND "
                            "deadline_ms <= ?1 ORDER BY deadline_ms LIMIT ?2",
                            &o->saga_due)) < 0)
        return rc;
    return 0;
}

int orders_saga_start(struct orders *o)
{
    struct service *svc = o->svc;
    unsigned long timeout = o->saga_timeout_ms, sweep;
    int rc;

    if ((rc = saga_prepare(o)) < 0)
        return rc;
    saga_metrics(o);
    sweep = timeout / 4 < 50 ? 50 : timeout / 4 > 1000 ? 1000 : timeout / 4;
    uv_timer_init(svc->loop, &o->saga_timer);
    o->saga_timer.data = o;
    /* Deadlines are rows: after a restart the first sweep finds them. */
    uv_timer_start(&o->saga_timer, on_sweep, sweep, sweep);
    o->refs += 1; /* the sweep's stop hook */
    service_on_stop(svc, on_saga_stop, o);
    return 0;
}
