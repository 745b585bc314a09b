/* api.c -- the orders service's HTTP routes (DESIGN.md §4, §8).
 *
 * POST /api/v1/orders {items:[{sku,qty}]} places an order for the token's
 * user (a service token names the user with "user_id"). The body is checked
 * first (400 for a body that is not an object, 422 with per-field messages),
 * then the outbox backlog (503 + Retry-After while Redis is away too long),
 * then whether the user exists, asked of the users service over HTTP: a
 * deferred response, so the loop keeps serving meanwhile. An unknown user is
 * 422 {"user_id": "no such user"}; users unreachable without a cached answer
 * is 503. Otherwise the order, its order.placed and stock.reserve events and
 * its first timeline steps commit in one transaction -> 202 with the order.
 * A client that went away before the check answered gets no order: it never
 * saw one accepted, so its retry cannot make a duplicate.
 *
 * Idempotency-Key (optional, 1..255 printable ASCII characters, scoped to
 * the order's user) makes a retried POST safe whatever happened to the
 * first: a key the user has used before answers 202 with the order it made
 * (Idempotent-Replayed: true; no user check, so even while users is down),
 * or 422 if that order's items differ. Two POSTs racing with one key both
 * pass the check; the unique index lets one commit and the other replays.
 *
 * GET /api/v1/orders/{id}: the order with its timeline, for its owner or a
 * service token; anyone else's, unknown and malformed ids alike are 404.
 *
 * GET /api/v1/orders?limit=&after=[&user_id=]: the caller's orders, newest
 * first, {"items": [...], "next": "<cursor>" | null}; a service token lists
 * everyone's, or one user's with user_id. limit is 1..100 (default 20);
 * after is the previous page's "next" (an opaque cursor: today the order's
 * seq in decimal). List items carry no "timeline" (it costs a query per
 * order); GET /orders/{id} has it.
 *
 * Owns one struct place per POST waiting for its user check, freed when it
 * is answered. */
#include "orders.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include <ripple/auth.h>
#include <ripple/http_reply.h>
#include <ripple/http_router.h>
#include <ripple/http_server.h>
#include <ripple/json_out.h>
#include "input.h"
#include <ripple/log.h>
#include <ripple/service.h>
#include <ripple/store.h>
#include <ripple/trace.h>

#define KEY_MAX 255 /* bytes of an Idempotency-Key */
/* A new order's 202, written on the stack: the largest valid order (100
 * items of a 64-byte SKU, about 9 KiB of items) and its first steps fit. */
#define ORDERS_CREATED_MAX 16384

/* A POST waiting for its user check. */
struct place {
    struct orders *o;         /* borrowed */
    struct http_request *req; /* answered by on_user_checked */
    json_t *items;            /* new: the canonical items */
    char user_id[IDS_UUID_LEN + 1];
    char key[KEY_MAX + 1]; /* Idempotency-Key, "" without one */
};

/* The dispatcher verifies tokens on these routes; never trust a gap.
 * Returns 1 when it answered req. */
static int refuse_anonymous(struct http_request *req, const struct auth_claims *who)
{
    if (who != NULL)
        return 0;
    http_reply_error(req, 401, NULL, "a bearer token is required");
    return 1;
}

/* The caller's own user id (lower case) from a user token. Returns 0, or
 * -EINVAL when the token's subject is not a user id. */
static int caller_id(const struct auth_claims *who, char out[IDS_UUID_LEN + 1])
{
    return auth_user_id(who, out);
}

/* ---------------------------------------------------------------------------
 * POST /api/v1/orders
 * ------------------------------------------------------------------------- */

/* The user an order is for: the token's user, or body.user_id for a service
 * token (required then). A user token may repeat its own id, no other.
 * Records problems in fields. */
static void body_user(json_t *body, const struct auth_claims *who, json_t *fields,
                      char user_id[IDS_UUID_LEN + 1])
{
    const json_t *v = json_object_get(body, "user_id");
    char given[IDS_UUID_LEN + 1];
    int own = !who->is_service && caller_id(who, user_id) == 0;

    if (v == NULL) {
        if (who->is_service)
            orders_input_problem(fields, "user_id", "is required with a service token");
        return;
    }
    if (!json_is_string(v)) {
        orders_input_problem(fields, "user_id", "must be a string");
        return;
    }
    if (ids_canonical(json_string_value(v), json_string_length(v), given) < 0) {
        orders_input_problem(fields, "user_id", "must be a UUID");
        return;
    }
    if (!who->is_service && (!own || !auth_is_subject(who, given))) {
        orders_input_problem(fields, "user_id", "a user may place orders only for themself");
        return;
    }
    memcpy(user_id, given, sizeof(given));
}

/* Checks the body into p (user_id, items). Returns 0, or -EINVAL after
 * answering req (400, 422 or 500). */
static int read_place(struct http_request *req, const struct auth_claims *who, struct place *p)
{
    json_t *body, *fields, *v;
    const char *key;

    if (http_reply_parse_object(req, &body) < 0)
        return -EINVAL;
    fields = json_object();
    if (fields == NULL) {
        json_decref(body);
        http_reply_internal(req);
        return -EINVAL;
    }
    json_object_foreach(body, key, v)
    {
        if (strcmp(key, "items") != 0 && strcmp(key, "user_id") != 0)
            orders_input_problem(fields, key, "unknown field");
    }
    if (orders_input_items(json_object_get(body, "items"), fields, &p->items) == -ENOMEM)
        orders_input_problem(fields, "items", "could not be read (out of memory)");
    body_user(body, who, fields, p->user_id);
    json_decref(body);
    if (json_object_size(fields) > 0) {
        json_decref(p->items);
        p->items = NULL;
        http_reply_invalid(req, fields);
        return -EINVAL;
    }
    json_decref(fields);
    return 0;
}

/* Reads the Idempotency-Key header into key ("" without one). Returns 0,
 * or -EINVAL after answering 400. */
static int read_key(struct http_request *req, char key[KEY_MAX + 1])
{
    size_t len, i;
    const char *v = http_request_header(req, "idempotency-key", &len);

    key[0] = '\0';
    if (v == NULL)
        return 0;
    for (i = 0; i < len && len <= KEY_MAX; i++) {
        if (v[i] < 0x20 || v[i] > 0x7e)
            break;
    }
    if (len == 0 || len > KEY_MAX || i < len) {
        http_reply_error(req, 400, NULL,
                         "Idempotency-Key must be 1 to 255 printable ASCII characters");
        return -EINVAL;
    }
    memcpy(key, v, len);
    key[len] = '\0';
    return 0;
}

static void place_free(struct place *p)
{
    json_decref(p->items);
    free(p);
}

/* Answers 202 with order id: order (stolen), or as read back when NULL
 * (a replay; committed even if it cannot be read back). */
/* The headers of a 202 with an order: where it is, and whether it is one an
 * earlier POST with the same Idempotency-Key made. */
static void add_order_headers(struct place *p, const char *id, int replayed)
{
    char location[64];
    int rc = snprintf(location, sizeof(location), "/api/v1/orders/%s", id);

    if (rc > 0 && (size_t)rc < sizeof(location) &&
        http_add_header(p->req, "Location", location) < 0)
        log_warn("orders: no room for Location");
    if (replayed && http_add_header(p->req, "Idempotent-Replayed", "true") < 0)
        log_warn("orders: no room for Idempotent-Replayed");
}

/* Answers 202 with order id as GET shows it, read back. */
static void reply_order(struct place *p, const char *id, int replayed)
{
    json_t *order = NULL;

    if (orders_get(p->o, id, NULL, &order) < 0)
        order = json_pack("{s:s, s:s}", "id", id, "user_id", p->user_id);
    add_order_headers(p, id, replayed);
    http_reply_json(p->req, 202, order);
}

static void reply_key_reused(struct http_request *req)
{
    json_t *fields =
        json_pack("{s:s}", "Idempotency-Key", "was used for an order with other items");

    if (fields != NULL)
        http_reply_invalid(req, fields);
    else
        http_reply_internal(req);
}

/* Answers a POST whose Idempotency-Key its user has used before: 202 with
 * that order when the items are the same, else 422. Returns 0 when it
 * answered, -ENOENT when the key is new. */
static int reply_replay(struct place *p)
{
    char id[IDS_UUID_LEN + 1], *had = NULL, *items, buf[ORDERS_ITEMS_STACK];
    size_t len;
    int rc = orders_find_by_key(p->o, p->user_id, p->key, id, &had);

    if (rc == -ENOENT)
        return rc;
    /* the encoder orders_create stored them with: the same items, the same text */
    items = rc == 0 ? json_out_dump(p->items, buf, sizeof(buf), &len) : NULL;
    if (items == NULL) {
        http_reply_internal(p->req); /* the lookup failed, or no memory */
    } else if (strcmp(items, had) != 0) {
        reply_key_reused(p->req);
    } else {
        log_write(LOG_LEVEL_INFO, id, "order replayed id=%s user=%s (Idempotency-Key)", id,
                  p->user_id);
        reply_order(p, id, 1);
    }
    if (items != buf)
        free(items);
    free(had);
    return 0;
}

/* Creates the order in one transaction and answers 202 with it. */
static void place_order(struct place *p)
{
    struct orders *o = p->o;
    struct store *st = o->svc->store;
    struct orders_new n = {
        .user_id = p->user_id, .items = p->items, .idempotency_key = p->key[0] ? p->key : NULL};
    char id[IDS_UUID_LEN + 1], body[ORDERS_CREATED_MAX];
    struct json_out out;
    int rc = store_begin(st);

    json_out_init(&out, body, sizeof(body));
    if (rc == 0 && (rc = orders_create(o, &n, id, &out)) < 0)
        store_rollback(st);
    if (rc == 0)
        rc = store_commit(st);
    if (rc == -EEXIST) {
        /* a POST with the same key committed while we checked the user */
        log_info("orders: user %s: a concurrent POST with this Idempotency-Key won", p->user_id);
        if (reply_replay(p) == 0)
            return;
    }
    if (rc < 0) {
        http_reply_internal(p->req);
        return;
    }
    log_write(LOG_LEVEL_INFO, id, "order placed id=%s user=%s items=%zu", id, p->user_id,
              json_array_size(p->items));
    if (out.overflow) { /* items and a reason longer than any valid order's */
        reply_order(p, id, 0);
        return;
    }
    add_order_headers(p, id, 0);
    http_reply_json_text(p->req, 202, body, out.len);
}

static void reply_unavailable(struct http_request *req, const char *why)
{
    char msg[256];

    snprintf(msg, sizeof(msg), "the users service is unavailable: %s", why);
    if (http_add_header(req, "Retry-After", "1") < 0)
        log_debug("orders: no room for Retry-After");
    http_reply_error(req, 503, NULL, msg);
}

static void on_user_checked(struct orders *o, enum orders_user answer, const char *why, void *data)
{
    struct place *p = data;
    json_t *fields;

    (void)o;
    trace_set(p->req->traceparent); /* the POST's trace, now that its check answered */
    if (http_request_aborted(p->req)) {
        /* Nobody to tell: release the request, make no order. */
        http_respond(p->req, 503, NULL, "", 0);
    } else if (answer == ORDERS_USER_EXISTS) {
        place_order(p);
    } else if (answer == ORDERS_USER_UNAVAILABLE) {
        reply_unavailable(p->req, why);
    } else if ((fields = json_pack("{s:s}", "user_id", "no such user")) != NULL) {
        http_reply_invalid(p->req, fields);
    } else {
        http_reply_internal(p->req);
    }
    place_free(p);
    trace_set(NULL);
}

static void on_place(struct http_request *req, const struct auth_claims *who, void *data)
{
    struct orders *o = data;
    struct place *p;
    char own[IDS_UUID_LEN + 1];
    int rc;

    if (refuse_anonymous(req, who))
        return;
    if (o->stopping) {
        http_reply_error(req, 503, NULL, "the service is stopping");
        return;
    }
    if (!who->is_service && caller_id(who, own) < 0) {
        http_reply_error(req, 403, NULL, "the token's subject is not a user");
        return;
    }
    p = calloc(1, sizeof(*p));
    if (p == NULL) {
        http_reply_internal(req);
        return;
    }
    p->o = o;
    p->req = req;
    if (read_key(req, p->key) < 0 || read_place(req, who, p) < 0 ||
        (p->key[0] != '\0' && reply_replay(p) == 0) || service_shed_write(o->svc, req)) {
        place_free(p);
        return;
    }
    rc = orders_user_check(o, p->user_id, on_user_checked, p);
    if (rc < 0) {
        reply_unavailable(req, rc == -ECANCELED ? "the service is stopping" : strerror(-rc));
        place_free(p);
    }
}

/* ---------------------------------------------------------------------------
 * GET /api/v1/orders/{id}
 * ------------------------------------------------------------------------- */

static void on_get(struct http_request *req, const struct auth_claims *who, void *data)
{
    const char *raw = http_request_param(req, "id");
    char id[IDS_UUID_LEN + 1], own[IDS_UUID_LEN + 1];
    json_t *order;
    int rc;

    if (refuse_anonymous(req, who))
        return;
    if (raw == NULL || ids_canonical(raw, strlen(raw), id) < 0 ||
        (!who->is_service && caller_id(who, own) < 0)) {
        http_reply_error(req, 404, NULL, "no such order");
        return;
    }
    rc = orders_get(data, id, who->is_service ? NULL : own, &order);
    if (rc == -ENOENT)
        http_reply_error(req, 404, NULL, "no such order");
    else if (rc < 0)
        http_reply_internal(req);
    else
        http_reply_json(req, 200, order);
}

/* ---------------------------------------------------------------------------
 * GET /api/v1/orders
 * ------------------------------------------------------------------------- */

static void on_list(struct http_request *req, const struct auth_claims *who, void *data)
{
    char own[IDS_UUID_LEN + 1], user_id[IDS_UUID_LEN + 1];
    struct http_page page;
    json_t *fields, *items;
    int64_t next;

    if (refuse_anonymous(req, who))
        return;
    if (!who->is_service && caller_id(who, own) < 0) {
        http_reply_error(req, 403, NULL, "the token's subject is not a user");
        return;
    }
    if ((fields = json_object()) == NULL) {
        http_reply_internal(req);
        return;
    }
    http_page_query(req, &page, fields);
    http_query_uuid(req, "user_id", user_id, fields);
    if (json_object_size(fields) > 0) {
        http_reply_invalid(req, fields);
        return;
    }
    json_decref(fields);
    if (!who->is_service && user_id[0] != '\0' && !auth_is_subject(who, user_id)) {
        http_reply_error(req, 403, NULL, "a user may list only their own orders");
        return;
    }
    if (orders_list(data, who->is_service ? (user_id[0] ? user_id : NULL) : own,
                    page.after > 0 ? page.after : INT64_MAX, page.limit, &items, &next) < 0) {
        http_reply_internal(req);
        return;
    }
    http_reply_page(req, items, next);
}

/* ---------------------------------------------------------------------------
 * The routes' description (ripple/openapi.h): GET /api/v1/openapi.json
 * ------------------------------------------------------------------------- */

#define NULLABLE(type) "{\"type\":[\"" type "\",\"null\"]}"
#define ORDER_PROPERTIES                                                                           \
    "\"id\":" OPENAPI_UUID ",\"user_id\":" OPENAPI_UUID ","                                        \
    "\"status\":{\"enum\":[\"PENDING\",\"AWAITING_PAYMENT\",\"CONFIRMED\",\"REJECTED\","           \
    "\"CANCELLED\"]},"                                                                             \
    "\"items\":{\"type\":\"array\",\"items\":{\"$ref\":\"#/components/schemas/OrderItem\"}},"      \
    "\"amount_cents\":" NULLABLE("integer") ",\"reason\":" NULLABLE(                               \
        "string") ","                                                                              \
                  "\"created_at\":" OPENAPI_TIME ",\"updated_at\":" OPENAPI_TIME ","               \
                  "\"traceparent\":{\"type\":[\"string\",\"null\"],\"description\":\"The W3C "     \
                  "trace context "                                                                 \
                  "the order was placed in.\"},"                                                   \
                  "\"timeline\":{\"type\":\"array\",\"items\":{\"$ref\":\"#/components/schemas/"   \
                  "Step\"},"                                                                       \
                  "\"description\":\"GET /api/v1/orders/{id} only.\"}"

static const struct openapi_schema orders_schemas[] = {
    {"OrderItem", "{\"type\":\"object\",\"required\":[\"sku\",\"qty\"],"
                  "\"additionalProperties\":false,\"properties\":{"
                  "\"sku\":{\"type\":\"string\",\"pattern\":\"^[A-Za-z0-9._-]{1,64}$\"},"
                  "\"qty\":{\"type\":\"integer\",\"minimum\":1,\"maximum\":1000000}}}"},
    {"Step", "{\"type\":\"object\",\"required\":[\"step\",\"event_type\",\"event_id\",\"stream\","
             "\"entry_id\",\"at\"],\"additionalProperties\":false,\"properties\":{"
             "\"step\":{\"type\":\"string\"},\"event_type\":{\"type\":\"string\"},"
             "\"event_id\":" NULLABLE("string") ",\"stream\":{\"type\":\"string\"},"
                                                "\"entry_id\":{\"type\":[\"string\",\"null\"],"
                                                "\"description\":\"The stream entry, "
                                                "once published.\"},\"at\":" OPENAPI_TIME "}}"},
    {"Order", "{\"type\":\"object\",\"required\":[\"id\",\"user_id\",\"status\",\"items\","
              "\"amount_cents\",\"reason\",\"created_at\",\"updated_at\"],"
              "\"additionalProperties\":false,\"properties\":{" ORDER_PROPERTIES "}}"},
    {"NewOrder", "{\"type\":\"object\",\"required\":[\"items\"],\"additionalProperties\":false,"
                 "\"properties\":{\"items\":{\"type\":\"array\",\"minItems\":1,\"maxItems\":100,"
                 "\"items\":{\"$ref\":\"#/components/schemas/OrderItem\"}},"
                 "\"user_id\":{\"type\":\"string\",\"format\":\"uuid\",\"description\":"
                 "\"Required with a service token; a user may name only themself.\"}}}"},
    {"OrderPage", "{\"type\":\"object\",\"required\":[\"items\",\"next\"],"
                  "\"additionalProperties\":false,\"properties\":{"
                  "\"items\":{\"type\":\"array\",\"items\":{\"$ref\":\"#/components/schemas/"
                  "Order\"}},\"next\":{\"type\":[\"string\",\"null\"],\"description\":\"The "
                  "cursor of the next page (its after), null on the last.\"}}}"},
    {NULL, NULL},
};

static const struct openapi_route doc_place = {
    .summary = "Place an order",
    .description = "For the token's user (a service token names the user). The user is checked "
                   "with the users service; then the order, its events and its first timeline "
                   "steps commit in one transaction and the saga runs on the streams. With an "
                   "`Idempotency-Key` its user used before, the answer is that order again "
                   "(`Idempotent-Replayed: true`).",
    .params = (const struct openapi_param[]){OPENAPI_HEADER("Idempotency-Key",
                                                            "1 to 255 printable ASCII characters, "
                                                            "scoped to the order's user.",
                                                            NULL),
                                             OPENAPI_END_PARAMS},
    .request = OPENAPI_REF("NewOrder"),
    .responses =
        (const struct openapi_response[]){
            OPENAPI_ANSWER(202,
                           "The order, PENDING (only id, user_id and status if it could not "
                           "be read back just after its commit).",
                           "{\"anyOf\":[{\"$ref\":\"#/components/schemas/Order\"},"
                           "{\"type\":\"object\",\"required\":[\"id\",\"user_id\"],"
                           "\"properties\":{" ORDER_PROPERTIES "}}]}"),
            OPENAPI_ERROR(400, "The body is not a JSON object, or a bad Idempotency-Key."),
            OPENAPI_ERROR(403, "The token's subject is not a user."),
            OPENAPI_ERROR(422, "Invalid items or user_id, no such user, or an Idempotency-Key used "
                               "for other items (`fields` says which)."),
            OPENAPI_ERROR(503, "The users service cannot be asked (and the user is not cached), "
                               "the outbox backlog is past its threshold, or the service is "
                               "stopping (`Retry-After`)."),
            OPENAPI_END},
};

static const struct openapi_route doc_list = {
    .summary = "List orders, newest first",
    .description = "The caller's orders; a service token lists everyone's, or one user's with "
                   "`user_id`. List items carry no `timeline`.",
    .params =
        (const struct openapi_param[]){
            OPENAPI_QUERY("limit", "Page size, 1 to 100 (default 20).",
                          "{\"type\":\"integer\",\"minimum\":1,\"maximum\":100,\"default\":20}"),
            OPENAPI_QUERY("after", "The `next` of the previous page.", OPENAPI_STRING),
            OPENAPI_QUERY("user_id", "One user's orders (a user may name only themself).",
                          OPENAPI_UUID),
            OPENAPI_END_PARAMS},
    .responses =
        (const struct openapi_response[]){
            OPENAPI_ANSWER(200, "A page of orders.", OPENAPI_REF("OrderPage")),
            OPENAPI_ERROR(403, "The token's subject is not a user, or another user's orders."),
            OPENAPI_ERROR(422, "A bad limit, after or user_id (`fields`)."), OPENAPI_END},
};

static const struct openapi_route doc_get = {
    .summary = "Read an order with its timeline",
    .description = "Its owner or a service token; anyone else's order is 404, like an "
                   "unknown one.",
    .params = (const struct openapi_param[]){OPENAPI_PATH("id", "The order's id.", OPENAPI_UUID),
                                             OPENAPI_END_PARAMS},
    .responses =
        (const struct openapi_response[]){
            OPENAPI_ANSWER(200, "The order.",
                           "{\"allOf\":[{\"$ref\":\"#/components/schemas/Order\"},"
                           "{\"required\":[\"timeline\"]}]}"),
            OPENAPI_ERROR(404, "No such order (or not the caller's, or not a UUID)."), OPENAPI_END},
};

void orders_api_start(struct orders *o)
{
    service_openapi(o->svc, "Orders and the order saga's orchestrator.", orders_schemas);
    service_route_doc(o->svc, "POST", "/api/v1/orders", 0, &doc_place, on_place, o);
    service_route_doc(o->svc, "GET", "/api/v1/orders", 0, &doc_list, on_list, o);
    service_route_doc(o->svc, "GET", "/api/v1/orders/{id}", 0, &doc_get, on_get, o);
}
