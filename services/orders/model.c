/* model.c -- the orders service's database: orders, their timelines, JSON.
 *
 * orders holds one row per order (seq, its insertion order, is the list
 * cursor); order_steps holds each order's saga timeline, one row per event
 * that moved it on, numbered 1, 2, ... per order. Writes happen inside the
 * caller's store transaction, together with the outbox rows they announce:
 * orders_emit appends an event and its step at once, so a state change, the
 * events it sends and its timeline commit or vanish together.
 *
 * The stream entry id of an event we sent is known only once the relay has
 * published it: reads look it up in the outbox (outbox_entry_id) and store
 * it back into the step, so the timeline keeps it after the outbox row is
 * pruned. The items column holds the canonical [{sku, qty}] JSON text that
 * the input rules produced. Statements are prepared once and finalized by
 * the store. */
#include "orders.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>
#include <sqlite3.h>

#include <ripple/clock.h>
#include <ripple/json_out.h>
#include <ripple/log.h>
#include <ripple/outbox.h>
#include <ripple/store.h>
#include <ripple/trace.h>
#include <ripple/stream_consumer.h>
#include <ripple/streams.h>

#define BACKFILL_MAX 16 /* entry ids stored back per read; the rest on a later one */

#define ORDER_COLS                                                                                 \
    "seq, id, user_id, status, items, amount_cents, reason, created_at, updated_at, traceparent"

static const char *const sql_insert =
    "INSERT INTO orders (id, user_id, status, items, reason, created_at, updated_at, "
    "idempotency_key, traceparent) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6, ?7, ?8)";
static const char *const sql_by_key =
    "SELECT id, items FROM orders WHERE user_id = ?1 AND idempotency_key = ?2";
static const char *const sql_by_id = "SELECT " ORDER_COLS " FROM orders WHERE id = ?1";
static const char *const sql_list_all =
    "SELECT " ORDER_COLS " FROM orders WHERE seq < ?1 ORDER BY seq DESC LIMIT ?2";
static const char *const sql_list_user = "SELECT " ORDER_COLS " FROM orders "
                                         "WHERE user_id = ?1 AND seq < ?2 "
                                         "ORDER BY seq DESC LIMIT ?3";
static const char *const sql_steps =
    "SELECT n, step, event_type, event_id, stream, entry_id, at FROM order_steps "
    "WHERE order_id = ?1 ORDER BY n";
/* One row of VALUES, its number from a subquery: an INSERT ... SELECT would
 * be a "multi-write" statement, which SQLite runs in a statement savepoint
 * of its own inside the transaction's (a third of this statement's time). */
static const char *const sql_step_add =
    "INSERT INTO order_steps (order_id, n, step, event_type, event_id, stream, entry_id, at) "
    "VALUES (?1, (SELECT COALESCE(MAX(n), 0) + 1 FROM order_steps WHERE order_id = ?1), "
    "?2, ?3, ?4, ?5, ?6, ?7)";
static const char *const sql_step_entry = "UPDATE order_steps SET entry_id = ?3 "
                                          "WHERE order_id = ?1 AND n = ?2 AND entry_id IS NULL";

int orders_model_prepare(struct orders *o)
{
    const struct store_sql list[] = {
        {sql_insert, &o->insert},         {sql_by_id, &o->by_id},   {sql_list_all, &o->list_all},
        {sql_list_user, &o->list_user},   {sql_steps, &o->steps},   {sql_step_add, &o->step_add},
        {sql_step_entry, &o->step_entry}, {sql_by_key, &o->by_key},
    };

    return store_prepare_all(o->svc->store, list, ARRAY_SIZE(list));
}

/* ---------------------------------------------------------------------------
 * Writes (inside the caller's transaction)
 * ------------------------------------------------------------------------- */

/* Appends a step to the timeline orders_create is writing, in
 * step_from_row's shape; a comma first unless it is the first. */
static void write_step(struct json_out *b, const char *step, const char *event_type,
                       const char *event_id, const char *stream, const char *entry_id,
                       const char *at)
{
    if (b->len > 0 && b->p[b->len - 1] != '[')
        json_out_raw(b, ",");
    json_out_raw(b, "{\"step\":");
    json_out_str(b, step);
    json_out_raw(b, ",\"event_type\":");
    json_out_str(b, event_type);
    json_out_raw(b, ",\"event_id\":");
    json_out_str(b, event_id);
    json_out_raw(b, ",\"stream\":");
    json_out_str(b, stream);
    json_out_raw(b, ",\"entry_id\":");
    json_out_str(b, entry_id);
    json_out_raw(b, ",\"at\":");
    json_out_str(b, at);
    json_out_raw(b, "}");
}

int orders_step_add(struct orders *o, const char *order_id, const char *step,
                    const char *event_type, const char *event_id, const char *stream,
                    const char *entry_id, const char *at)
{
    int rc = store_exec(o->svc->store, o->step_add, "orders: add a timeline step", "sssssss",
                        order_id, step, event_type, event_id, stream, entry_id, at);

    if (rc == 0 && o->timeline != NULL)
        write_step(o->timeline, step, event_type, event_id, stream, entry_id, at);
    return rc;
}

int orders_emit(struct orders *o, const char *order_id, enum orders_out out, json_t *data,
                const char *step, const char *at)
{
    const struct stream_type *t = &orders_emits[out];
    char event_id[IDS_UUID_LEN + 1];
    int rc = outbox_emit(o->svc->outbox, t, data, order_id, event_id);

    if (rc < 0)
        return rc;
    return orders_step_add(o, order_id, step, t->type, event_id, t->stream, NULL, at);
}

static int insert_order(struct orders *o, const char *id, const struct orders_new *n,
                        const char *items, const char *at)
{
    /* -EEXIST: the user's Idempotency-Key is taken (a POST with it
     * committed first); the id, a fresh UUIDv7, cannot be */
    return store_exec(o->svc->store, o->insert, "orders: insert an order", "ssssssss", id,
                      n->user_id, n->reason ? ORDERS_REJECTED : ORDERS_PENDING, items, n->reason,
                      at, n->idempotency_key, trace_current());
}

/* order.placed and stock.reserve: the saga's first step. */
static int emit_placed(struct orders *o, const char *id, const struct orders_new *n, const char *at)
{
    int rc = orders_emit(
        o, id, ORDERS_OUT_PLACED,
        json_pack("{s:s, s:s, s:O}", "order_id", id, "user_id", n->user_id, "items", n->items),
        ORDERS_STEP_PLACED, at);

    if (rc == 0)
        rc = orders_emit(o, id, ORDERS_OUT_RESERVE,
                         json_pack("{s:s, s:O}", "order_id", id, "items", n->items),
                         ORDERS_STEP_RESERVE_STOCK, at);
    return rc;
}

static int emit_rejected(struct orders *o, const char *id, const struct orders_new *n,
                         const char *at)
{
    return orders_emit(
        o, id, ORDERS_OUT_REJECTED,
        json_pack("{s:s, s:s, s:s}", "order_id", id, "user_id", n->user_id, "reason", n->reason),
        ORDERS_STEP_REJECTED, at);
}

/* The order orders_create is writing, up to its timeline's steps, as
 * order_from_row reads it back (the same keys in the same order). */
static void write_head(struct json_out *b, const char *id, const struct orders_new *n,
                       const char *items, const char *at)
{
    json_out_raw(b, "{\"id\":");
    json_out_str(b, id);
    json_out_raw(b, ",\"user_id\":");
    json_out_str(b, n->user_id);
    json_out_raw(b, ",\"status\":");
    json_out_str(b, n->reason ? ORDERS_REJECTED : ORDERS_PENDING);
    json_out_raw(b, ",\"items\":");
    json_out_raw(b, items); /* jansson's compact text of a valid array */
    json_out_raw(b, ",\"amount_cents\":null,\"reason\":");
    json_out_str(b, n->reason);
    json_out_raw(b, ",\"created_at\":");
    json_out_str(b, at);
    json_out_raw(b, ",\"updated_at\":");
    json_out_str(b, at);
    json_out_raw(b, ",\"traceparent\":");
    json_out_str(b, trace_current());
    json_out_raw(b, ",\"timeline\":[");
}

static int create(struct orders *o, const struct orders_new *n, const char *id, const char *items,
                  const char *at)
{
    const struct stream_msg *cmd = n->cmd;
    int rc = insert_order(o, id, n, items, at);

    if (rc == 0 && cmd != NULL)
        rc = orders_step_add(o, id, ORDERS_STEP_REQUESTED, cmd->type, cmd->id, cmd->stream,
                             cmd->entry_id, at);
    if (rc == 0)
        rc = n->reason ? emit_rejected(o, id, n, at) : emit_placed(o, id, n, at);
    if (rc == 0 && n->reason == NULL)
        rc = orders_saga_arm(o, id);
    return rc;
}

int orders_create(struct orders *o, const struct orders_new *n, char id[IDS_UUID_LEN + 1],
                  struct json_out *out)
{
    char at[CLOCK_ISO8601_LEN + 1], *items;
    int rc;

    if (!store_in_txn(o->svc->store))
        return -EINVAL;
    if (clock_iso8601(at, sizeof(at)) < 0)
        return -EIO;
    if ((items = json_dumps(n->items, JSON_COMPACT)) == NULL)
        return -ENOMEM;
    ids_uuid7(id); /* time-ordered: its index and its steps append */
    if (out != NULL)
        write_head(out, id, n, items, at);
    o->timeline = out;
    rc = create(o, n, id, items, at);
    o->timeline = NULL;
    if (out != NULL)
        json_out_raw(out, "]}");
    free(items);
    return rc;
}

/* ---------------------------------------------------------------------------
 * Reads: rows to JSON
 * ------------------------------------------------------------------------- */

static const char *col_text(struct sqlite3_stmt *st, int i)
{
    return (const char *)sqlite3_column_text(st, i);
}

/* A string, or null for a NULL column. NULL only on ENOMEM. */
static json_t *col_string_or_null(struct sqlite3_stmt *st, int i)
{
    if (sqlite3_column_type(st, i) == SQLITE_NULL)
        return json_null();
    return json_string(col_text(st, i));
}

static json_t *col_integer_or_null(struct sqlite3_stmt *st, int i)
{
    if (sqlite3_column_type(st, i) == SQLITE_NULL)
        return json_null();
    return json_integer(sqlite3_column_int64(st, i));
}

/* The order on st's current row (ORDER_COLS) as JSON, without its
 * timeline. Returns a new object, or NULL (ENOMEM, or a row we cannot read:
 * logged). */
static json_t *order_from_row(struct sqlite3_stmt *st)
{
    const char *text = col_text(st, 4);
    json_t *items = text ? json_loads(text, JSON_REJECT_DUPLICATES, NULL) : NULL;
    json_t *v = json_object();
    int bad = v == NULL || !json_is_array(items);

    if (bad) {
        log_error("orders: cannot read the items of order seq %lld",
                  (long long)sqlite3_column_int64(st, 0));
        json_decref(items);
        json_decref(v);
        return NULL;
    }
    /* Each call steals its value, even on failure. */
    bad |= json_object_set_new(v, "id", json_string(col_text(st, 1))) < 0;
    bad |= json_object_set_new(v, "user_id", json_string(col_text(st, 2))) < 0;
    bad |= json_object_set_new(v, "status", json_string(col_text(st, 3))) < 0;
    bad |= json_object_set_new(v, "items", items) < 0;
    bad |= json_object_set_new(v, "amount_cents", col_integer_or_null(st, 5)) < 0;
    bad |= json_object_set_new(v, "reason", col_string_or_null(st, 6)) < 0;
    bad |= json_object_set_new(v, "created_at", json_string(col_text(st, 7))) < 0;
    bad |= json_object_set_new(v, "updated_at", json_string(col_text(st, 8))) < 0;
    bad |= json_object_set_new(v, "traceparent", col_string_or_null(st, 9)) < 0;
    if (bad) {
        json_decref(v);
        return NULL;
    }
    return v;
}

/* An entry id to store back into step n once the timeline is read. */
struct backfill {
    int64_t n;
    char entry_id[ORDERS_ENTRY_MAX];
};

/* The step on st's current row as JSON. A step without an entry id gets it
 * from the outbox when its event is published, noted in *fill (*filled). */
static json_t *step_from_row(struct orders *o, struct sqlite3_stmt *st, struct backfill *fill,
                             int *filled)
{
    const char *event_id = col_text(st, 3);
    json_t *v = json_object(), *entry;
    int bad = 0;

    *filled = 0;
    if (sqlite3_column_type(st, 5) != SQLITE_NULL) {
        entry = json_string(col_text(st, 5));
    } else if (event_id != NULL && fill != NULL &&
               outbox_entry_id(o->svc->outbox, event_id, fill->entry_id, sizeof(fill->entry_id)) ==
                   0) {
        fill->n = sqlite3_column_int64(st, 0);
        *filled = 1;
        entry = json_string(fill->entry_id);
    } else {
        entry = json_null();
    }
    /* Each call steals its value, even on failure (v NULL included). */
    bad |= json_object_set_new(v, "step", json_string(col_text(st, 1))) < 0;
    bad |= json_object_set_new(v, "event_type", json_string(col_text(st, 2))) < 0;
    bad |= json_object_set_new(v, "event_id", json_string(event_id)) < 0;
    bad |= json_object_set_new(v, "stream", json_string(col_text(st, 4))) < 0;
    bad |= json_object_set_new(v, "entry_id", entry) < 0;
    bad |= json_object_set_new(v, "at", json_string(col_text(st, 6))) < 0;
    if (bad) {
        json_decref(v);
        return NULL;
    }
    return v;
}

/* Stores entry ids found in the outbox back into their steps. A failure
 * costs only a lookup on a later read (and the id, once the outbox row is
 * pruned). */
static void store_backfill(struct orders *o, const char *order_id, const struct backfill *fill,
                           size_t n)
{
    struct sqlite3_stmt *st = o->step_entry;

    for (size_t i = 0; i < n; i++) {
        if (store_exec(o->svc->store, st, "orders: store an entry id", "sIs", order_id,
                       (int64_t)fill[i].n, fill[i].entry_id) < 0)
            return;
    }
}

/* Steps st (bound) through the steps of an order into steps, noting
 * entry ids to store back in fill (BACKFILL_MAX, *nfill used). Returns the
 * last sqlite3_step code, or SQLITE_NOMEM. */
static int read_steps(struct orders *o, struct sqlite3_stmt *st, json_t *steps,
                      struct backfill *fill, size_t *nfill)
{
    int rc, filled;

    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        json_t *step = step_from_row(o, st, *nfill < BACKFILL_MAX ? &fill[*nfill] : NULL, &filled);

        if (json_array_append_new(steps, step) < 0)
            return SQLITE_NOMEM;
        *nfill += (size_t)filled;
    }
    return rc;
}

/* Adds "timeline" to v, the order id's steps in order. Returns 0, -EIO or
 * -ENOMEM. */
static int add_timeline(struct orders *o, json_t *v, const char *id)
{
    struct backfill fill[BACKFILL_MAX];
    struct sqlite3_stmt *st = o->steps;
    json_t *steps = json_array();
    size_t nfill = 0;
    int rc;

    if (steps == NULL)
        return -ENOMEM;
    sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
    rc = read_steps(o, st, steps, fill, &nfill);
    if (rc != SQLITE_DONE && rc != SQLITE_NOMEM)
        log_error("orders: read the timeline of %s: %s", id, store_errmsg(o->svc->store));
    store_reset(st);
    if (rc != SQLITE_DONE) {
        json_decref(steps);
        return rc == SQLITE_NOMEM ? -ENOMEM : -EIO;
    }
    store_backfill(o, id, fill, nfill);
    return json_object_set_new(v, "timeline", steps) < 0 ? -ENOMEM : 0;
}

/* Reads order id (without timeline) into *out when owner matches. Returns
 * 0, -ENOENT, -EIO or -ENOMEM. */
static int load_order(struct orders *o, const char *id, const char *owner, json_t **out)
{
    struct sqlite3_stmt *st = o->by_id;
    int rc;

    sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        const char *user_id = col_text(st, 2);

        if (owner != NULL && (user_id == NULL || strcmp(user_id, owner) != 0))
            rc = -ENOENT; /* another user's order: as if there were none */
        else
            rc = (*out = order_from_row(st)) != NULL ? 0 : -ENOMEM;
    } else if (rc == SQLITE_DONE) {
        rc = -ENOENT;
    } else {
        log_error("orders: read order %s: %s", id, store_errmsg(o->svc->store));
        rc = -EIO;
    }
    store_reset(st);
    return rc;
}

int orders_find_by_key(struct orders *o, const char *user_id, const char *key,
                       char id[IDS_UUID_LEN + 1], char **items)
{
    struct sqlite3_stmt *st = o->by_key;
    int rc;

    sqlite3_bind_text(st, 1, user_id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, key, -1, SQLITE_STATIC);
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        const char *found = col_text(st, 0), *text = col_text(st, 1);

        rc = -ENOMEM;
        if (found != NULL && strlen(found) == IDS_UUID_LEN && text != NULL &&
            (*items = strdup(text)) != NULL) {
            memcpy(id, found, IDS_UUID_LEN + 1);
            rc = 0;
        }
    } else if (rc == SQLITE_DONE) {
        rc = -ENOENT;
    } else {
        log_error("orders: find an order by its key: %s", store_errmsg(o->svc->store));
        rc = -EIO;
    }
    store_reset(st);
    return rc;
}

int orders_get(struct orders *o, const char *id, const char *owner, json_t **out)
{
    json_t *v = NULL;
    int rc = load_order(o, id, owner, &v);

    if (rc == 0)
        rc = add_timeline(o, v, id);
    if (rc < 0) {
        json_decref(v);
        return rc;
    }
    *out = v;
    return 0;
}

/* Steps st (bound) into list, at most limit rows; *last is the seq of the
 * last one taken. Returns the last sqlite3_step code (SQLITE_ROW: more rows
 * follow), or SQLITE_NOMEM. */
static int read_page(struct sqlite3_stmt *st, unsigned limit, json_t *list, int64_t *last)
{
    unsigned count = 0;
    int rc;

    while ((rc = sqlite3_step(st)) == SQLITE_ROW && count < limit) {
        if (json_array_append_new(list, order_from_row(st)) < 0)
            return SQLITE_NOMEM;
        *last = sqlite3_column_int64(st, 0);
        count++;
    }
    return rc;
}

int orders_list(struct orders *o, const char *user_id, int64_t before, unsigned limit,
                json_t **items, int64_t *next)
{
    struct sqlite3_stmt *st = user_id ? o->list_user : o->list_all;
    json_t *list = json_array();
    int64_t last = 0;
    int rc, i = 1;

    if (list == NULL)
        return -ENOMEM;
    if (user_id != NULL)
        sqlite3_bind_text(st, i++, user_id, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, i++, before);
    sqlite3_bind_int64(st, i, (sqlite3_int64)limit + 1); /* one more: is there a next page? */
    rc = read_page(st, limit, list, &last);
    if (rc != SQLITE_DONE && rc != SQLITE_ROW && rc != SQLITE_NOMEM)
        log_error("orders: list orders: %s", store_errmsg(o->svc->store));
    store_reset(st);
    if (rc != SQLITE_DONE && rc != SQLITE_ROW) {
        json_decref(list);
        return rc == SQLITE_NOMEM ? -ENOMEM : -EIO;
    }
    *next = rc == SQLITE_ROW ? last : 0;
    *items = list;
    return 0;
}
