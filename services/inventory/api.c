/* api.c -- the inventory service's HTTP routes (DESIGN.md §4, §8).
 *
 * Public reads, no token needed:
 *   GET /api/v1/products?limit=&after=  products in sku (byte) order,
 *       {"items": [product...], "next": "<sku>" | null}; limit 1..100
 *       (default 20), after is the previous page's "next" (a sku); a bad
 *       value is 422 with "fields".
 *   GET /api/v1/products/{sku}  one product, or 404.
 * A product is {sku, name, price_cents, available, reserved, sold}.
 *
 * Every handler answers at once (no deferred work), so nothing here outlives
 * the request: struct inventory is borrowed from the module. The statements
 * are prepared once at start and reset after every use. */
#include "inventory.h"

#include <errno.h>
#include <string.h>

#include <jansson.h>
#include <sqlite3.h>

#include <ripple/http_reply.h>
#include <ripple/http_router.h>
#include <ripple/http_server.h>
#include <ripple/log.h>
#include <ripple/service.h>
#include <ripple/store.h>

#define PRODUCT_COLUMNS "sku, name, price_cents, available, reserved, sold"

static const char *const sql_list =
    "SELECT " PRODUCT_COLUMNS " FROM products WHERE sku > ?1 ORDER BY sku LIMIT ?2";
static const char *const sql_get = "SELECT " PRODUCT_COLUMNS " FROM products WHERE sku = ?1";

/* What a list request asks for. */
struct list_query {
    unsigned limit;
    char after[INVENTORY_SKU_MAX + 1]; /* "" for the first page */
};

static void reply_internal(struct http_request *req)
{
    http_reply_error(req, 500, NULL, "internal error");
}

/* The product in st's current row (PRODUCT_COLUMNS). Returns a new object,
 * or NULL on ENOMEM or a NULL text column. */
static json_t *product_json(sqlite3_stmt *st)
{
    const char *sku = (const char *)sqlite3_column_text(st, 0);
    const char *name = (const char *)sqlite3_column_text(st, 1);

    if (sku == NULL || name == NULL)
        return NULL;
    /* json_pack copies the strings: they need not outlive the row. */
    return json_pack("{s:s, s:s, s:I, s:I, s:I, s:I}", "sku", sku, "name", name, "price_cents",
                     (json_int_t)sqlite3_column_int64(st, 2), "available",
                     (json_int_t)sqlite3_column_int64(st, 3), "reserved",
                     (json_int_t)sqlite3_column_int64(st, 4), "sold",
                     (json_int_t)sqlite3_column_int64(st, 5));
}

/* ---------------------------------------------------------------------------
 * GET /api/v1/products
 * ------------------------------------------------------------------------- */

/* Parses buf as a decimal integer in [min, max], digits only. */
static int parse_uint(const char *buf, unsigned min, unsigned max, unsigned *out)
{
    unsigned long v = 0;

    if (*buf == '\0')
        return -EINVAL;
    for (; *buf != '\0'; buf++) {
        if (*buf < '0' || *buf > '9')
            return -EINVAL;
        v = v * 10 + (unsigned long)(*buf - '0');
        if (v > max)
            return -EINVAL;
    }
    if (v < min)
        return -EINVAL;
    *out = (unsigned)v;
    return 0;
}

/* Records "key": msg in fields. An ENOMEM loses only the message: callers
 * count problems by return value, so the answer stays a 422. Returns 1. */
static int field_problem(json_t *fields, const char *key, const char *msg)
{
    json_object_set_new(fields, key, json_string(msg));
    return 1;
}

/* Reads limit and after into q, recording problems in fields. Returns the
 * number of problems. */
static int read_list_query(struct http_request *req, json_t *fields, struct list_query *q)
{
    char buf[16];
    int n, bad = 0;

    q->limit = INVENTORY_LIST_DEFAULT;
    q->after[0] = '\0';
    n = http_request_query(req, "limit", buf, sizeof(buf));
    if (n != -ENOENT && (n < 0 || parse_uint(buf, 1, INVENTORY_LIST_MAX, &q->limit) < 0))
        bad += field_problem(fields, "limit", "must be an integer from 1 to 100");
    n = http_request_query(req, "after", q->after, sizeof(q->after));
    if (n == -ENOENT)
        q->after[0] = '\0';
    else if (n < 0 || !inventory_sku_valid(q->after, (size_t)n))
        bad += field_problem(fields, "after", "must be the \"next\" of a previous page (a sku)");
    return bad;
}

/* Appends up to q->limit products to items; *more is set when another one
 * follows. Returns 0 or -EIO / -ENOMEM (logged). */
static int list_products(struct inventory *inv, const struct list_query *q, json_t *items,
                         int *more)
{
    sqlite3_stmt *st = inv->list;
    int rc = sqlite3_bind_text(st, 1, q->after, -1, SQLITE_STATIC);

    *more = 0;
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_int64(st, 2, (sqlite3_int64)q->limit + 1);
    while (rc == SQLITE_OK && (rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (json_array_size(items) == q->limit) {
            *more = 1;
            rc = SQLITE_DONE;
            break;
        }
        if (json_array_append_new(items, product_json(st)) < 0) {
            store_reset(st);
            log_error("inventory: cannot encode a product list");
            return -ENOMEM;
        }
        rc = SQLITE_OK;
    }
    if (rc != SQLITE_DONE)
        log_error("inventory: list products: %s", store_errmsg(inv->svc->store));
    store_reset(st);
    return rc == SQLITE_DONE ? 0 : -EIO;
}

/* Answers {"items": items, "next": last sku | null}. Steals items. */
static void reply_page(struct http_request *req, json_t *items, int more)
{
    json_t *last = json_array_get(items, json_array_size(items) - 1);
    json_t *next = more && last != NULL ? json_copy(json_object_get(last, "sku")) : json_null();
    json_t *page = json_object();
    int rc;

    /* json_object_set_new steals its value, on failure too (NULL page or
     * value included). */
    rc = json_object_set_new(page, "items", items);
    rc |= json_object_set_new(page, "next", next);
    if (rc != 0) {
        json_decref(page);
        reply_internal(req);
        return;
    }
    http_reply_json(req, 200, page);
}

static void on_list(struct http_request *req, const struct auth_claims *who, void *data)
{
    struct inventory *inv = data;
    struct list_query q;
    json_t *fields = json_object(), *items;
    int more;

    (void)who;
    if (fields == NULL) {
        reply_internal(req);
        return;
    }
    if (read_list_query(req, fields, &q) > 0) {
        http_reply_invalid(req, fields);
        return;
    }
    json_decref(fields);
    items = json_array();
    if (items == NULL || list_products(inv, &q, items, &more) < 0) {
        json_decref(items);
        reply_internal(req);
        return;
    }
    reply_page(req, items, more);
}

/* ---------------------------------------------------------------------------
 * GET /api/v1/products/{sku}
 * ------------------------------------------------------------------------- */

static void on_get(struct http_request *req, const struct auth_claims *who, void *data)
{
    struct inventory *inv = data;
    const char *sku = http_request_param(req, "sku");
    sqlite3_stmt *st = inv->get;
    json_t *product = NULL;
    int rc;

    (void)who;
    if (sku == NULL || !inventory_sku_valid(sku, strlen(sku))) {
        http_reply_error(req, 404, NULL, "no such product");
        return;
    }
    rc = sqlite3_bind_text(st, 1, sku, -1, SQLITE_STATIC);
    if (rc == SQLITE_OK)
        rc = sqlite3_step(st);
    if (rc == SQLITE_ROW)
        product = product_json(st);
    else if (rc != SQLITE_DONE)
        log_error("inventory: read product: %s", store_errmsg(inv->svc->store));
    store_reset(st);
    if (product != NULL)
        http_reply_json(req, 200, product);
    else if (rc == SQLITE_DONE)
        http_reply_error(req, 404, NULL, "no such product");
    else
        reply_internal(req);
}

/* ---------------------------------------------------------------------------
 * Start
 * ------------------------------------------------------------------------- */

int inventory_api_prepare(struct inventory *inv)
{
    struct store *st = inv->svc->store;
    int rc = store_prepare(st, sql_list, &inv->list);

    if (rc == 0)
        rc = store_prepare(st, sql_get, &inv->get);
    if (rc < 0)
        log_error("inventory: cannot prepare the product reads: %s", store_errmsg(st));
    return rc;
}

/* The routes' description (ripple/openapi.h): GET /api/v1/openapi.json. */

#define SKU_SCHEMA "{\"type\":\"string\",\"pattern\":\"^[A-Za-z0-9._-]{1,64}$\"}"
#define COUNT_SCHEMA "{\"type\":\"integer\",\"minimum\":0}"

static const struct openapi_schema inventory_schemas[] = {
    {"Product", "{\"type\":\"object\",\"required\":[\"sku\",\"name\",\"price_cents\","
                "\"available\",\"reserved\",\"sold\"],\"additionalProperties\":false,"
                "\"properties\":{\"sku\":" SKU_SCHEMA ",\"name\":{\"type\":\"string\"},"
                "\"price_cents\":" COUNT_SCHEMA ",\"available\":" COUNT_SCHEMA
                ",\"reserved\":" COUNT_SCHEMA ",\"sold\":" COUNT_SCHEMA "}}"},
    {"ProductPage", "{\"type\":\"object\",\"required\":[\"items\",\"next\"],"
                    "\"additionalProperties\":false,\"properties\":{"
                    "\"items\":{\"type\":\"array\",\"items\":{\"$ref\":\"#/components/schemas/"
                    "Product\"}},\"next\":{\"type\":[\"string\",\"null\"],\"description\":\"The "
                    "last sku of this page (the next page's after), null on the last.\"}}}"},
    {NULL, NULL},
};

static const struct openapi_route doc_list = {
    .summary = "List products in sku order",
    .description = "Public.",
    .params =
        (const struct openapi_param[]){
            OPENAPI_QUERY("limit", "Page size, 1 to 100 (default 20).",
                          "{\"type\":\"integer\",\"minimum\":1,\"maximum\":100,\"default\":20}"),
            OPENAPI_QUERY("after", "The `next` of the previous page (a sku).", SKU_SCHEMA),
            OPENAPI_END_PARAMS},
    .responses =
        (const struct openapi_response[]){
            OPENAPI_ANSWER(200, "A page of products.", OPENAPI_REF("ProductPage")),
            OPENAPI_ERROR(422, "A bad limit or after (`fields`)."), OPENAPI_END},
};

static const struct openapi_route doc_get = {
    .summary = "Read a product",
    .description = "Public.",
    .params = (const struct openapi_param[]){OPENAPI_PATH("sku", "The product's sku.", SKU_SCHEMA),
                                             OPENAPI_END_PARAMS},
    .responses =
        (const struct openapi_response[]){
            OPENAPI_ANSWER(200, "The product.", OPENAPI_REF("Product")),
            OPENAPI_ERROR(404, "No such product."), OPENAPI_END},
};

void inventory_api_routes(struct inventory *inv)
{
    service_openapi(inv->svc, "Products and their stock: reserved for orders, then sold.",
                    inventory_schemas);
    service_route_doc(inv->svc, "GET", "/api/v1/products", HTTP_ROUTE_PUBLIC, &doc_list, on_list,
                      inv);
    service_route_doc(inv->svc, "GET", "/api/v1/products/{sku}", HTTP_ROUTE_PUBLIC, &doc_get,
                      on_get, inv);
}
