/* events.c -- the inventory service's stream side (DESIGN.md §5, §6, §8).
 *
 * Consumes inventory.commands and replies on inventory.events. Every handler
 * runs inside the consumer's open transaction, under a savepoint of its own:
 * its stock changes, its reservation row and the outbox rows it appends
 * commit together with the inbox row, or not at all. Payloads were checked
 * against the catalog before a handler runs (types and ranges can be
 * trusted; optional fields may be absent).
 *
 *   stock.reserve {order_id, items}  all or nothing. The first command for an
 *       order records its outcome in reservations; a repeat (a new event id
 *       for the same order) changes no stock and replays the recorded
 *       outcome. Every sku must exist (else unknown_sku) and have the qty
 *       available (else out_of_stock); then each qty moves from available to
 *       reserved and stock.reserved carries the total at today's prices. A
 *       refusal is recorded REJECTED and answered stock.rejected: both are
 *       normal outcomes, not dead letters.
 *   stock.release {order_id}  idempotent compensation: a RESERVED order's
 *       qtys go back to available; RELEASED and REJECTED stay as they are; an
 *       unknown order gets a RELEASED tombstone, so a reserve that arrives
 *       later is refused ("released") and changes nothing. stock.released is
 *       always sent. Releasing a COMMITTED order is refused (dead letter):
 *       sold stock does not come back through a compensation.
 *   stock.commit {order_id}  a RESERVED order's qtys move from reserved to
 *       sold; a COMMITTED one is answered again; anything else is refused
 *       (dead letter: the saga never asks for it).
 *   product.restock {sku, qty, name?, price_cents?}  adds qty to available
 *       (and restocked) of a known sku, updating name and price when given;
 *       an unknown sku needs both and is created. Answers product.restocked.
 *
 * Order ids are stored and sent lower-cased. Events carry the command's
 * trace, or else the order id (the command's event id for restocks). The
 * products table CHECKs the stock invariant on every write. */
#include "inventory.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <sqlite3.h>

#include <ripple/log.h>
#include <ripple/outbox.h>
#include <ripple/service.h>
#include <ripple/store.h>
#include <ripple/stream_consumer.h>
#include <ripple/streams.h>

#define NOW "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')"

static const char *const sql_res_get =
    "SELECT status, reason, amount_cents FROM reservations WHERE order_id = ?1";
static const char *const sql_res_insert =
    "INSERT INTO reservations (order_id, status, reason, amount_cents, created_at, updated_at) "
    "VALUES (?1, ?2, ?3, nullif(?4, 0), " NOW ", " NOW ")";
static const char *const sql_res_set_status =
    "UPDATE reservations SET status = ?2, updated_at = " NOW " WHERE order_id = ?1";
static const char *const sql_item_insert =
    "INSERT INTO reservation_items (order_id, sku, qty) VALUES (?1, ?2, ?3)";
static const char *const sql_product_stock =
    "SELECT price_cents, available, initial + restocked FROM products WHERE sku = ?1";
static const char *const sql_product_take =
    "UPDATE products SET available = available - ?2, reserved = reserved + ?2, updated_at = " NOW
    " WHERE sku = ?1 AND available >= ?2";
static const char *const sql_product_insert =
    "INSERT INTO products (sku, name, price_cents, available, restocked, created_at, updated_at) "
    "VALUES (?1, ?2, ?3, ?4, ?4, " NOW ", " NOW ")";
static const char *const sql_product_restock =
    "UPDATE products SET available = available + ?2, restocked = restocked + ?2, "
    "name = coalesce(?3, name), price_cents = coalesce(nullif(?4, 0), price_cents), "
    "updated_at = " NOW " WHERE sku = ?1 RETURNING available";
static const char *const sql_items_release =
    "UPDATE products SET available = products.available + i.qty, "
    "reserved = products.reserved - i.qty, updated_at = " NOW
    " FROM reservation_items AS i WHERE i.order_id = ?1 AND products.sku = i.sku";
static const char *const sql_items_commit =
    "UPDATE products SET reserved = products.reserved - i.qty, sold = products.sold + i.qty, "
    "updated_at = " NOW
    " FROM reservation_items AS i WHERE i.order_id = ?1 AND products.sku = i.sku";

enum res_status { RES_NONE, RES_RESERVED, RES_REJECTED, RES_RELEASED, RES_COMMITTED };

static const char *const res_names[] = {
    [RES_NONE] = "NONE",         [RES_RESERVED] = "RESERVED",   [RES_REJECTED] = "REJECTED",
    [RES_RELEASED] = "RELEASED", [RES_COMMITTED] = "COMMITTED",
};

/* A reservation row, copied out of its statement. */
struct reservation {
    enum res_status status;                /* RES_NONE: no row */
    char reason[INVENTORY_REASON_MAX + 1]; /* REJECTED only, else "" */
    int64_t amount_cents;                  /* 0 when NULL */
};

/* A product's stock, copied out of its statement. */
struct stock {
    int64_t price_cents, available;
    int64_t total; /* initial + restocked: every unit there ever was */
};

/* ---------------------------------------------------------------------------
 * Statements
 * ------------------------------------------------------------------------- */

static enum res_status res_status_of(const unsigned char *s)
{
    for (size_t i = RES_RESERVED; s != NULL && i < ARRAY_SIZE(res_names); i++) {
        if (strcmp((const char *)s, res_names[i]) == 0)
            return (enum res_status)i;
    }
    return RES_NONE;
}

/* Loads the reservation of oid into r (r->status RES_NONE when there is
 * none). Returns 0 or -EIO. */
static int res_load(struct inventory *inv, const char *oid, struct reservation *r)
{
    sqlite3_stmt *st = inv->res_get;
    int rc = store_query(inv->svc->store, st, "inventory: read reservation", "s", oid);

    memset(r, 0, sizeof(*r));
    if (rc <= 0)
        return rc;
    r->status = res_status_of(sqlite3_column_text(st, 0));
    r->amount_cents = sqlite3_column_int64(st, 2);
    /* The schema admits only the four names; only this module writes
     * reasons, all of them short snake_case words. */
    rc = store_column_text(st, 1, r->reason, sizeof(r->reason));
    store_reset(st);
    if (r->status == RES_NONE || rc == -ENOSPC) {
        log_error("inventory: reservation %s is corrupt", oid);
        return -EIO;
    }
    return 0;
}

/* Inserts the reservation of oid; reason NULL and amount 0 are stored NULL. */
static int res_insert(struct inventory *inv, const char *oid, enum res_status status,
                      const char *reason, int64_t amount_cents)
{
    return store_exec(inv->svc->store, inv->res_insert, "inventory: insert reservation", "sssI",
                      oid, res_names[status], reason, amount_cents);
}

static int res_set_status(struct inventory *inv, const char *oid, enum res_status status)
{
    return store_exec(inv->svc->store, inv->res_set_status, "inventory: update reservation", "ss",
                      oid, res_names[status]);
}

/* Runs items_release or items_commit for oid's items, then sets status. */
static int res_settle(struct inventory *inv, sqlite3_stmt *items, const char *oid,
                      enum res_status status)
{
    int rc = store_exec(inv->svc->store, items, "inventory: move reserved stock", "s", oid);

    return rc < 0 ? rc : res_set_status(inv, oid, status);
}

/* Looks sku up. Returns 1 (found, *s filled), 0 (no such sku) or -EIO. */
static int stock_load(struct inventory *inv, const char *sku, struct stock *s)
{
    sqlite3_stmt *st = inv->product_stock;
    int rc = store_query(inv->svc->store, st, "inventory: read stock", "s", sku);

    if (rc > 0) {
        s->price_cents = sqlite3_column_int64(st, 0);
        s->available = sqlite3_column_int64(st, 1);
        s->total = sqlite3_column_int64(st, 2);
        store_reset(st);
    }
    return rc;
}

/* ---------------------------------------------------------------------------
 * Replies (appended to the outbox in the consumer's transaction)
 * ------------------------------------------------------------------------- */

/* What inventory emits (DESIGN.md §12), in the order of enum inv_out. */
enum inv_out { OUT_RESERVED, OUT_REJECTED, OUT_RELEASED, OUT_COMMITTED, OUT_RESTOCKED };

static const struct spec_field order_fields[] = {SPEC_UUID("order_id"), SPEC_END};
static const struct spec_field reserved_fields[] = {
    SPEC_UUID("order_id"), SPEC_POSITIVE("amount_cents", STREAMS_MAX_INTEGER), SPEC_END};
static const struct spec_field rejected_fields[] = {SPEC_UUID("order_id"), SPEC_WORD("reason"),
                                                    SPEC_END};
static const struct spec_field restocked_fields[] = {
    SPEC_TOKEN("sku", INVENTORY_SKU_MAX), SPEC_POSITIVE("qty", STREAMS_MAX_QTY),
    SPEC_INT("available", 0, STREAMS_MAX_INTEGER), SPEC_END};

const struct stream_type inventory_emits[] = {
    [OUT_RESERVED] = {"inventory.events", "stock.reserved", reserved_fields,
                      .summary = "the order's items are reserved; amount_cents at today's prices"},
    [OUT_REJECTED] = {"inventory.events", "stock.rejected", rejected_fields,
                      .summary = "nothing reserved: unknown_sku, out_of_stock, ..."},
    [OUT_RELEASED] = {"inventory.events", "stock.released", order_fields,
                      .summary = "a reservation was returned (or never existed)"},
    [OUT_COMMITTED] = {"inventory.events", "stock.committed", order_fields,
                       .summary = "a reservation was sold"},
    [OUT_RESTOCKED] = {"inventory.events", "product.restocked", restocked_fields,
                       .summary = "qty added; available is the new level"},
    {NULL},
};

static int emit_reserved(struct inventory *inv, const char *oid, int64_t amount_cents,
                         const char *trace)
{
    return outbox_emit(
        inv->svc->outbox, &inventory_emits[OUT_RESERVED],
        json_pack("{s:s, s:I}", "order_id", oid, "amount_cents", (json_int_t)amount_cents), trace,
        NULL);
}

static int emit_rejected(struct inventory *inv, const char *oid, const char *reason,
                         const char *trace)
{
    return outbox_emit(inv->svc->outbox, &inventory_emits[OUT_REJECTED],
                       json_pack("{s:s, s:s}", "order_id", oid, "reason", reason), trace, NULL);
}

/* stock.released or stock.committed: {order_id}. */
static int emit_order(struct inventory *inv, enum inv_out out, const char *oid, const char *trace)
{
    return outbox_emit(inv->svc->outbox, &inventory_emits[out], json_pack("{s:s}", "order_id", oid),
                       trace, NULL);
}

/* ---------------------------------------------------------------------------
 * The order id and the trace of a command
 * ------------------------------------------------------------------------- */

static const char *trace_of(const struct stream_msg *msg, const char *fallback)
{
    return stream_msg_trace(msg) ? stream_msg_trace(msg) : fallback;
}

/* The prologue of every order command: its order id into oid, its trace
 * (the envelope's, else the order id) into *trace, and the order's
 * reservation into *r. Returns 0, STREAM_CONSUMER_REJECT or -EIO. */
static int load_order(struct inventory *inv, struct stream_msg *msg, char oid[IDS_UUID_LEN + 1],
                      const char **trace, struct reservation *r)
{
    memset(r, 0, sizeof(*r));
    *trace = msg->id;
    if (stream_msg_uuid(msg, "order_id", oid) < 0)
        return stream_msg_reject(msg, "data.order_id: expected a UUID");
    *trace = trace_of(msg, oid);
    return res_load(inv, oid, r);
}

/* ---------------------------------------------------------------------------
 * stock.reserve
 * ------------------------------------------------------------------------- */

/* The verdict on an order's items: reason NULL when every item can be
 * reserved, for amount_cents in all. sku (borrowed from the message) names
 * the first item at fault, with what it wanted and what there was. */
struct verdict {
    const char *reason;
    int64_t amount_cents;
    const char *sku;
    int64_t want, have;
};

/* Checks every item of items into v: an unknown sku outranks a short one,
 * which outranks a total past STREAMS_MAX_INTEGER. Returns 0 or -EIO. */
static int check_items(struct inventory *inv, const json_t *items, struct verdict *v)
{
    const char *unknown = NULL, *shortest = NULL;
    int64_t want = 0, have = 0, line;
    int too_large = 0;
    struct stock s;

    memset(v, 0, sizeof(*v));
    for (size_t i = 0; i < json_array_size(items); i++) {
        const json_t *it = json_array_get(items, i);
        const char *sku = json_string_value(json_object_get(it, "sku"));
        int64_t qty = json_integer_value(json_object_get(it, "qty"));
        int rc;

        if ((rc = stock_load(inv, sku, &s)) < 0)
            return rc;
        if (rc == 0) {
            if (unknown == NULL)
                unknown = sku;
            continue;
        }
        if (s.available < qty && shortest == NULL) {
            shortest = sku;
            want = qty;
            have = s.available;
        }
        if (__builtin_mul_overflow(s.price_cents, qty, &line) ||
            __builtin_add_overflow(v->amount_cents, line, &v->amount_cents) ||
            v->amount_cents > STREAMS_MAX_INTEGER)
            too_large = 1;
    }
    if (unknown != NULL)
        *v = (struct verdict){"unknown_sku", 0, unknown, 0, 0};
    else if (shortest != NULL)
        *v = (struct verdict){"out_of_stock", 0, shortest, want, have};
    else if (too_large)
        *v = (struct verdict){"amount_too_large", 0, NULL, 0, 0};
    return 0;
}

/* Moves every item's qty from available to reserved and records it. */
static int take_items(struct inventory *inv, const char *oid, const json_t *items)
{
    sqlite3_stmt *take = inv->product_take, *rec = inv->item_insert;

    for (size_t i = 0; i < json_array_size(items); i++) {
        const json_t *it = json_array_get(items, i);
        const char *sku = json_string_value(json_object_get(it, "sku"));
        int64_t qty = json_integer_value(json_object_get(it, "qty"));
        int rc;

        if ((rc = store_exec(inv->svc->store, take, "inventory: reserve stock", "sI", sku, qty)) <
            0)
            return rc;
        /* Checked in this transaction: a miss means the database moved
         * under us, so roll the whole order back. */
        if (sqlite3_changes(store_db(inv->svc->store)) != 1)
            return -EIO;
        if ((rc = store_exec(inv->svc->store, rec, "inventory: record reserved item", "ssI", oid,
                             sku, qty)) < 0)
            return rc;
    }
    return 0;
}

/* A repeated stock.reserve: no stock moves, the recorded outcome is sent
 * again. */
static int replay_reserve(struct inventory *inv, const char *oid, const struct reservation *r,
                          const char *trace)
{
    const char *reason = r->status == RES_REJECTED ? r->reason : "released";

    log_write(LOG_LEVEL_INFO, trace,
              "stock.reserve repeated for order %s: already %s, answer replayed", oid,
              res_names[r->status]);
    if (r->status == RES_RESERVED || r->status == RES_COMMITTED)
        return emit_reserved(inv, oid, r->amount_cents, trace);
    return emit_rejected(inv, oid, reason, trace);
}

static int refuse_reserve(struct inventory *inv, const char *oid, const struct verdict *v,
                          const char *trace)
{
    int rc = res_insert(inv, oid, RES_REJECTED, v->reason, 0);

    if (rc == 0)
        rc = emit_rejected(inv, oid, v->reason, trace);
    if (rc == 0 && v->want > 0)
        log_write(LOG_LEVEL_INFO, trace,
                  "stock rejected order=%s reason=%s sku=%s wanted=%lld have=%lld", oid, v->reason,
                  v->sku, (long long)v->want, (long long)v->have);
    else if (rc == 0)
        log_write(LOG_LEVEL_INFO, trace, "stock rejected order=%s reason=%s%s%s", oid, v->reason,
                  v->sku ? " sku=" : "", v->sku ? v->sku : "");
    return rc;
}

static int on_reserve(struct stream_msg *msg, void *data)
{
    struct inventory *inv = data;
    const json_t *items = json_object_get(msg->data, "items");
    char oid[IDS_UUID_LEN + 1];
    struct reservation r;
    struct verdict v;
    const char *trace;
    int rc;

    if ((rc = load_order(inv, msg, oid, &trace, &r)) != 0)
        return rc;
    if (r.status != RES_NONE)
        return replay_reserve(inv, oid, &r, trace);
    if ((rc = check_items(inv, items, &v)) < 0)
        return rc;
    if (v.reason != NULL)
        return refuse_reserve(inv, oid, &v, trace);
    /* The reservation first: its items reference it. */
    if ((rc = res_insert(inv, oid, RES_RESERVED, NULL, v.amount_cents)) < 0 ||
        (rc = take_items(inv, oid, items)) < 0 ||
        (rc = emit_reserved(inv, oid, v.amount_cents, trace)) < 0)
        return rc;
    log_write(LOG_LEVEL_INFO, trace, "stock reserved order=%s items=%zu amount_cents=%lld", oid,
              json_array_size(items), (long long)v.amount_cents);
    return 0;
}

/* ---------------------------------------------------------------------------
 * stock.release and stock.commit
 * ------------------------------------------------------------------------- */

static int on_release(struct stream_msg *msg, void *data)
{
    struct inventory *inv = data;
    char oid[IDS_UUID_LEN + 1];
    struct reservation r;
    const char *trace, *what;
    int rc;

    if ((rc = load_order(inv, msg, oid, &trace, &r)) != 0)
        return rc;
    if (r.status == RES_COMMITTED)
        return stream_msg_reject(msg, "already_committed: order %s was sold, nothing to release",
                                 oid);
    if (r.status == RES_NONE) {
        what = "unknown order: tombstone recorded, a later reserve will be refused";
        rc = res_insert(inv, oid, RES_RELEASED, NULL, 0);
    } else if (r.status == RES_RESERVED) {
        what = "reserved stock returned to available";
        rc = res_settle(inv, inv->items_release, oid, RES_RELEASED);
    } else {
        what = r.status == RES_RELEASED ? "already released: no change" : "was rejected: no change";
    }
    if (rc == 0)
        rc = emit_order(inv, OUT_RELEASED, oid, trace);
    if (rc == 0)
        log_write(LOG_LEVEL_INFO, trace, "stock released order=%s (%s)", oid, what);
    return rc;
}

static int on_commit(struct stream_msg *msg, void *data)
{
    struct inventory *inv = data;
    char oid[IDS_UUID_LEN + 1];
    struct reservation r;
    const char *trace;
    int rc;

    if ((rc = load_order(inv, msg, oid, &trace, &r)) != 0)
        return rc;
    if (r.status == RES_NONE)
        return stream_msg_reject(msg, "unknown_order: no reservation for order %s", oid);
    if (r.status != RES_RESERVED && r.status != RES_COMMITTED)
        return stream_msg_reject(msg, "not_reserved: order %s is %s, nothing to commit", oid,
                                 res_names[r.status]);
    if (r.status == RES_RESERVED &&
        (rc = res_settle(inv, inv->items_commit, oid, RES_COMMITTED)) < 0)
        return rc;
    if ((rc = emit_order(inv, OUT_COMMITTED, oid, trace)) < 0)
        return rc;
    log_write(LOG_LEVEL_INFO, trace, "stock committed order=%s%s", oid,
              r.status == RES_COMMITTED ? " (already committed: answer replayed)" : "");
    return 0;
}

/* ---------------------------------------------------------------------------
 * product.restock
 * ------------------------------------------------------------------------- */

/* What a restock asks for; name is trimmed, borrowed from the message. */
struct restock {
    const char *sku, *name; /* name NULL when absent */
    size_t name_len;
    int64_t qty, price_cents; /* price_cents 0 when absent */
};

static int is_space(char c)
{
    return c == ' ' || (c >= '\t' && c <= '\r');
}

static void read_restock(const struct stream_msg *msg, struct restock *rs)
{
    const json_t *name = json_object_get(msg->data, "name");

    rs->sku = json_string_value(json_object_get(msg->data, "sku"));
    rs->qty = json_integer_value(json_object_get(msg->data, "qty"));
    rs->price_cents = json_integer_value(json_object_get(msg->data, "price_cents"));
    rs->name = json_string_value(name);
    rs->name_len = json_string_length(name);
    /* Stored trimmed, as users stores names. */
    while (rs->name_len > 0 && is_space(rs->name[0])) {
        rs->name++;
        rs->name_len--;
    }
    while (rs->name_len > 0 && is_space(rs->name[rs->name_len - 1]))
        rs->name_len--;
}

/* Adds to a known sku; *available is its new level. */
static int restock_known(struct inventory *inv, const struct restock *rs, int64_t *available)
{
    sqlite3_stmt *st = inv->product_restock;
    /* RETURNING: the new level, then the statement runs to its end */
    int rc = store_query(inv->svc->store, st, "inventory: restock", "sISI", rs->sku, rs->qty,
                         rs->name, rs->name_len, rs->price_cents);

    if (rc > 0) {
        *available = sqlite3_column_int64(st, 0);
        rc = sqlite3_step(st) == SQLITE_DONE ? 0 : -EIO;
        store_reset(st);
    }
    return rc < 0 ? -EIO : 0;
}

/* Creates an unknown sku with qty available. */
static int restock_new(struct inventory *inv, const struct restock *rs)
{
    return store_exec(inv->svc->store, inv->product_insert, "inventory: insert product", "sSII",
                      rs->sku, rs->name, rs->name_len, rs->price_cents, rs->qty);
}

static int on_restock(struct stream_msg *msg, void *data)
{
    struct inventory *inv = data;
    const char *trace = trace_of(msg, msg->id);
    struct restock rs;
    struct stock s;
    int64_t available = 0;
    int rc, known;

    read_restock(msg, &rs);
    if ((known = stock_load(inv, rs.sku, &s)) < 0)
        return known;
    if (!known && (rs.name == NULL || rs.name_len == 0 || rs.price_cents <= 0))
        return stream_msg_reject(msg, "unknown sku %s needs name and price_cents", rs.sku);
    if (known && s.total > STREAMS_MAX_INTEGER - rs.qty)
        return stream_msg_reject(msg, "stock_too_large: %s would pass %lld units", rs.sku,
                                 STREAMS_MAX_INTEGER);
    if (known)
        rc = restock_known(inv, &rs, &available);
    else if ((rc = restock_new(inv, &rs)) == 0)
        available = rs.qty;
    if (rc < 0)
        return rc;
    rc = outbox_emit(inv->svc->outbox, &inventory_emits[OUT_RESTOCKED],
                     json_pack("{s:s, s:I, s:I}", "sku", rs.sku, "qty", (json_int_t)rs.qty,
                               "available", (json_int_t)available),
                     trace, NULL);
    if (rc == 0)
        log_write(LOG_LEVEL_INFO, trace, "product restocked sku=%s qty=%lld available=%lld%s%s",
                  rs.sku, (long long)rs.qty, (long long)available, known ? "" : " (new product)",
                  known && (rs.name != NULL || rs.price_cents > 0) ? " (name/price updated)" : "");
    return rc;
}

/* ---------------------------------------------------------------------------
 * The consumer
 * ------------------------------------------------------------------------- */

/* What inventory consumes (DESIGN.md §12). */
static const struct spec_field item_fields[] = {SPEC_TOKEN("sku", INVENTORY_SKU_MAX),
                                                SPEC_POSITIVE("qty", STREAMS_MAX_QTY), SPEC_END};
static const struct spec_field item = SPEC_OBJECT(NULL, item_fields);
static const struct spec_field reserve_fields[] = {
    SPEC_UUID("order_id"), SPEC_ARRAY("items", &item, 1, STREAMS_MAX_ITEMS, .unique = "sku"),
    SPEC_END};
static const struct spec_field restock_fields[] = {
    SPEC_TOKEN("sku", INVENTORY_SKU_MAX),
    SPEC_POSITIVE("qty", STREAMS_MAX_QTY),
    SPEC_TEXT("name", INVENTORY_NAME_MAX, .optional = 1),
    SPEC_POSITIVE("price_cents", STREAMS_MAX_INTEGER, .optional = 1),
    SPEC_END,
};

const struct stream_type inventory_consumes[] = {
    {"inventory.commands", "stock.reserve", reserve_fields, on_reserve,
     "reserve every item of an order, or none"},
    {"inventory.commands", "stock.release", order_fields, on_release,
     "return an order's reservation (idempotent)"},
    {"inventory.commands", "stock.commit", order_fields, on_commit, "sell a reservation"},
    {"inventory.commands", "product.restock", restock_fields, on_restock,
     "add stock; an unknown sku needs name and price_cents"},
    {NULL},
};

static void release_inventory(void *data)
{
    free(data);
}

int inventory_events_prepare(struct inventory *inv)
{
    const struct store_sql list[] = {
        {sql_res_get, &inv->res_get},
        {sql_res_insert, &inv->res_insert},
        {sql_res_set_status, &inv->res_set_status},
        {sql_item_insert, &inv->item_insert},
        {sql_product_stock, &inv->product_stock},
        {sql_product_take, &inv->product_take},
        {sql_product_insert, &inv->product_insert},
        {sql_product_restock, &inv->product_restock},
        {sql_items_release, &inv->items_release},
        {sql_items_commit, &inv->items_commit},
    };

    return store_prepare_all(inv->svc->store, list, ARRAY_SIZE(list));
}

void inventory_events_attach(struct inventory *inv)
{
    service_consume(inv->svc, inv, release_inventory);
}
