/* model.c -- the orders service's database: orders, their timelines, JSON.
 *
 * orders holds one row per order (seq, its insertion order, is the list
 * cursor), its saga timeline included: the JSON array of the events that
 * moved it on. Writes happen inside the caller's store transaction,
 * together with the outbox rows they announce: orders_emit appends an event
 * to the outbox and its step to o->steps, the steps of the transition being
 * written, which the transition's one write of the row (the INSERT here,
 * the saga's UPDATE) appends to the timeline. So a state change, the events
 * it sends and its timeline commit or vanish together, and a transition
 * writes one row of orders, not one per step besides.
 *
 * The stream entry id of an event we sent is known only once the relay has
 * published it: reads look it up in the outbox (outbox_entry_id) and store
 * it back into the timeline, so it keeps the id after the outbox row is
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

#define ORDER_COLS                                                                                 \
    "seq, id, user_id, status, items, amount_cents, reason, created_at, updated_at, traceparent"

/* ?9: the saga's deadline, 0 for none (a rejected order); ?10: its steps. */
static const char *const sql_insert =
    "INSERT INTO orders (id, user_id, status, items, reason, created_at, updated_at, "
    "idempotency_key, traceparent, deadline_ms, timeline) "
    "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6, ?7, ?8, NULLIF(?9, 0), '[' || ?10 || ']')";
static const char *const sql_by_key =
    "SELECT id, items FROM orders WHERE user_id = ?1 AND idempotency_key = ?2";
static const char *const sql_by_id = "SELECT " ORDER_COLS ", timeline FROM orders WHERE id = ?1";
static const char *const sql_list_all =
    "SELECT " ORDER_COLS " FROM orders WHERE seq < ?1 ORDER BY seq DESC LIMIT ?2";
static const char *const sql_list_user = "SELECT " ORDER_COLS " FROM orders "
                                         "WHERE user_id = ?1 AND seq < ?2 "
                                         "ORDER BY seq DESC LIMIT ?3";
/* The timeline with the entry ids a read found (in the same loop turn as
 * the read: no write came between). */
static const char *const sql_timeline_fill = "UPDATE orders SET timeline = ?2 WHERE id = ?1";

int orders_model_prepare(struct orders *o)
{
    const struct store_sql list[] = {
        {sql_insert, &o->insert},     {sql_by_id, &o->by_id},
        {sql_list_all, &o->list_all}, {sql_list_user, &o->list_user},
        {sql_by_key, &o->by_key},     {sql_timeline_fill, &o->timeline_fill},
    };

    return store_prepare_all(o->svc->store, list, ARRAY_SIZE(list));
}

/* ---------------------------------------------------------------------------
 * Writes (inside the caller's transaction)
 * ------------------------------------------------------------------------- */

/* Appends a step to o->steps, in the timeline's shape; a comma first
 * unless it is the first. */
static void write_step(struct json_out *b, const char *step, const char *event_type,
                       const char *event_id, const char *stream, const char *entry_id,
                       const char *at)
{
    if (b->len > 0)
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

void orders_steps_reset(struct orders *o)
{
    json_out_init(&o->steps, o->steps_buf, sizeof(o->steps_buf));
    o->steps_sent = 0;
}

int orders_steps_check(const struct orders *o, const char *order_id)
{
    if (!o->steps.overflow)
        return 0;
    /* a transition's few steps are far below ORDERS_STEPS_MAX: a bug */
    log_error("orders: the steps of a transition of %s exceed %zu bytes", order_id,
              sizeof(o->steps_buf));
    return -EOVERFLOW;
}

void orders_step_add(struct orders *o, const char *step, const char *event_type,
                     const char *event_id, const char *stream, const char *entry_id, const char *at)
{
    write_step(&o->steps, step, event_type, event_id, stream, entry_id, at);
}

int orders_emit(struct orders *o, const char *order_id, enum orders_out out, json_t *data,
                const char *step, const char *at)
{
    const struct stream_type *t = &orders_emits[out];
    char event_id[IDS_UUID_LEN + 1];
    int rc = outbox_emit(o->svc->outbox, t, data, order_id, event_id);

    if (rc == 0) {
        orders_step_add(o, step, t->type, event_id, t->stream, NULL, at);
        o->steps_sent++;
    }
    return rc;
}

/* The order row, its timeline o->steps, and a deadline unless rejected. */
static int insert_order(struct orders *o, const char *id, const struct orders_new *n,
                        const char *items, const char *at)
{
    int64_t deadline = n->reason ? 0 : orders_saga_deadline(o);
    int rc = orders_steps_check(o, id);

    /* -EEXIST: the user's Idempotency-Key is taken (a POST with it
     * committed first); the id, a fresh UUIDv7, cannot be */
    if (rc == 0)
        rc =
            store_exec(o->svc->store, o->insert, "orders: insert an order", "ssssssssIS", id,
                       n->user_id, n->reason ? ORDERS_REJECTED : ORDERS_PENDING, items, n->reason,
                       at, n->idempotency_key, trace_current(), deadline, o->steps.p, o->steps.len);
    return rc;
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

/* The order orders_create wrote, as load_order and add_timeline read it
 * back (the same keys in the same order). */
static void write_order(struct json_out *b, const char *id, const struct orders_new *n,
                        const char *items, const char *at, const struct json_out *steps)
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
    json_out_mem(b, steps->p, steps->len);
    json_out_raw(b, "]}");
}

/* The events first, then the row with the steps they made. */
static int create(struct orders *o, const struct orders_new *n, const char *id, const char *items,
                  const char *at)
{
    const struct stream_msg *cmd = n->cmd;
    int rc;

    orders_steps_reset(o);
    if (cmd != NULL)
        orders_step_add(o, ORDERS_STEP_REQUESTED, cmd->type, cmd->id, cmd->stream, cmd->entry_id,
                        at);
    rc = n->reason ? emit_rejected(o, id, n, at) : emit_placed(o, id, n, at);
    if (rc == 0)
        rc = insert_order(o, id, n, items, at);
    return rc;
}

int orders_create(struct orders *o, const struct orders_new *n, char id[IDS_UUID_LEN + 1],
                  struct json_out *out)
{
    char at[CLOCK_ISO8601_LEN + 1], buf[ORDERS_ITEMS_STACK], *items;
    size_t len;
    int rc;

    if (!store_in_txn(o->svc->store))
        return -EINVAL;
    if (clock_iso8601(at, sizeof(at)) < 0)
        return -EIO;
    if ((items = json_out_dump(n->items, buf, sizeof(buf), &len)) == NULL)
        return -ENOMEM;
    ids_uuid7(id); /* time-ordered: its index appends */
    rc = create(o, n, id, items, at);
    if (rc == 0 && out != NULL)
        write_order(out, id, n, items, at, &o->steps);
    if (items != buf)
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

/* Fills in the entry ids of the steps in steps (the timeline) whose event
 * was published since. Returns how many it filled. */
static int fill_entry_ids(struct orders *o, json_t *steps)
{
    char entry_id[ORDERS_ENTRY_MAX];
    size_t i;
    json_t *step;
    int n = 0;

    json_array_foreach(steps, i, step)
    {
        const char *event_id = json_string_value(json_object_get(step, "event_id"));

        if (!json_is_null(json_object_get(step, "entry_id")) || event_id == NULL ||
            outbox_entry_id(o->svc->outbox, event_id, entry_id, sizeof(entry_id)) < 0)
            continue;
        if (json_object_set_new(step, "entry_id", json_string(entry_id)) == 0)
            n++;
    }
    return n;
}

/* Stores the timeline with the entry ids a read found. A failure costs only
 * a lookup on a later read (and the id, once the outbox row is pruned). */
static void store_timeline(struct orders *o, const char *id, const json_t *steps)
{
    char *text = json_dumps(steps, JSON_COMPACT);

    if (text != NULL &&
        store_exec(o->svc->store, o->timeline_fill, "orders: store entry ids", "ss", id, text) < 0)
        log_warn("orders: %s: entry ids not stored; a later read looks them up again", id);
    free(text);
}

/* Adds "timeline" to v from column col of st (the order id's row): its
 * steps, oldest first, with the entry ids published since filled in
 * (*filled: how many). Returns 0, -EIO (logged) or -ENOMEM. */
static int add_timeline(struct orders *o, json_t *v, struct sqlite3_stmt *st, int col,
                        const char *id, int *filled)
{
    const char *text = col_text(st, col);
    json_t *steps = text ? json_loads(text, JSON_REJECT_DUPLICATES, NULL) : NULL;

    if (!json_is_array(steps)) {
        log_error("orders: cannot read the timeline of order %s", id);
        json_decref(steps);
        return text ? -EIO : -ENOMEM;
    }
    *filled = fill_entry_ids(o, steps);
    return json_object_set_new(v, "timeline", steps) < 0 ? -ENOMEM : 0;
}

/* Reads order id with its timeline into *out when owner matches. Returns
 * 0, -ENOENT, -EIO or -ENOMEM. */
static int load_order(struct orders *o, const char *id, const char *owner, json_t **out)
{
    struct sqlite3_stmt *st = o->by_id;
    int rc, filled = 0;

    sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        const char *user_id = col_text(st, 2);

        if (owner != NULL && (user_id == NULL || strcmp(user_id, owner) != 0))
            rc = -ENOENT; /* another user's order: as if there were none */
        else if ((*out = order_from_row(st)) == NULL)
            rc = -ENOMEM;
        else if ((rc = add_timeline(o, *out, st, 10, id, &filled)) < 0) {
            json_decref(*out);
            *out = NULL;
        }
    } else if (rc == SQLITE_DONE) {
        rc = -ENOENT;
    } else {
        log_error("orders: read order %s: %s", id, store_errmsg(o->svc->store));
        rc = -EIO;
    }
    store_reset(st); /* before the write: st's columns die here */
    if (rc == 0 && filled > 0)
        store_timeline(o, id, json_object_get(*out, "timeline"));
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
    return load_order(o, id, owner, out);
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
