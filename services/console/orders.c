/* orders.c -- recent orders and one order's saga, asked of orders.
 *
 *   GET /api/v1/console/orders?limit=N  orders' GET /api/v1/orders?limit=N
 *       (everyone's, newest first: the console calls with a service token)
 *   GET /api/v1/console/orders/{id}     orders' GET /api/v1/orders/{id}, and
 *       its timeline as a sequence across the services ("saga"):
 *       {order, trace, final, total_ms, lanes: [...], steps: [{n, step,
 *        event_type, event_id, stream, entry_id, at, from, to, since_prev_ms,
 *        since_start_ms}]}
 * A step's lanes come from its stream: <svc>.commands goes from the
 * orchestrator (orders) to svc, or from a client to orders for orders'
 * own commands; <svc>.events goes from svc to orders, and orders' own
 * events are drawn on orders itself (they are published for anyone).
 *
 * The trace: an order will carry a W3C traceparent (issue 18's trace
 * context); until then its trace id is the order id, the `trace` of every
 * log line and stream entry of its saga. */
#include "console.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>

#include <ripple/auth.h>
#include <ripple/http_client.h>
#include <ripple/http_reply.h>
#include <ripple/http_server.h>
#include <ripple/ids.h>
#include <ripple/log.h>
#include <ripple/service.h>

#define ORCHESTRATOR "orders" /* the module that runs the saga */
#define CLIENT_LANE "client"
#define COMMANDS_SUFFIX ".commands"
#define EVENTS_SUFFIX ".events"
#define LANE_MAX 64

/* One request to orders in flight. */
struct ask {
    struct console *c;
    struct http_request *req;
    int one; /* 1: one order (its saga); 0: the list */
};

/* ---------------------------------------------------------------------------
 * The saga of one order
 * ------------------------------------------------------------------------- */

/* Milliseconds since the epoch of 2026-11-26T04:24:11.123Z, or -1. */
static long long iso_ms(const char *s)
{
    struct tm tm = {0};
    int ms = 0, n = 0;

    if (s == NULL ||
        sscanf(s, "%4d-%2d-%2dT%2d:%2d:%2d.%3dZ%n", &tm.tm_year, &tm.tm_mon, &tm.tm_mday,
               &tm.tm_hour, &tm.tm_min, &tm.tm_sec, &ms, &n) != 7 ||
        s[n] != '\0')
        return -1;
    tm.tm_year -= 1900;
    tm.tm_mon -= 1;
    return (long long)timegm(&tm) * 1000 + ms;
}

/* The lanes a step on stream goes between (see the file comment). */
static void step_lanes(const char *stream, char *from, char *to)
{
    const char *dot = stream ? strchr(stream, '.') : NULL;
    size_t n = dot ? (size_t)(dot - stream) : 0;
    char svc[LANE_MAX];

    snprintf(from, LANE_MAX, ORCHESTRATOR);
    snprintf(to, LANE_MAX, ORCHESTRATOR);
    if (n == 0 || n >= LANE_MAX)
        return;
    memcpy(svc, stream, n);
    svc[n] = '\0';
    if (strcmp(dot, COMMANDS_SUFFIX) == 0) {
        snprintf(from, LANE_MAX, "%s", strcmp(svc, ORCHESTRATOR) == 0 ? CLIENT_LANE : ORCHESTRATOR);
        snprintf(to, LANE_MAX, "%s", svc);
    } else if (strcmp(dot, EVENTS_SUFFIX) == 0) {
        snprintf(from, LANE_MAX, "%s", svc);
    }
}

static void lane_add(json_t *lanes, const char *name)
{
    size_t i;
    json_t *v;

    json_array_foreach(lanes, i, v)
    {
        if (strcmp(json_string_value(v), name) == 0)
            return;
    }
    if (strcmp(name, CLIENT_LANE) == 0)
        json_array_insert_new(lanes, 0, json_string(name));
    else
        json_array_append_new(lanes, json_string(name));
}

/* The step of timeline entry e, n-th, given the times before it. */
static json_t *step_json(const json_t *e, size_t n, long long start, long long prev, json_t *lanes)
{
    const char *stream = json_string_value(json_object_get(e, "stream"));
    long long at = iso_ms(json_string_value(json_object_get(e, "at")));
    char from[LANE_MAX], to[LANE_MAX];
    json_t *s = json_deep_copy(e);

    step_lanes(stream, from, to);
    lane_add(lanes, from);
    lane_add(lanes, to);
    if (s == NULL)
        return NULL;
    json_object_set_new(s, "n", json_integer((json_int_t)n));
    json_object_set_new(s, "from", json_string(from));
    json_object_set_new(s, "to", json_string(to));
    json_object_set_new(s, "since_prev_ms",
                        at >= 0 && prev >= 0 ? json_integer(at - prev) : json_null());
    json_object_set_new(s, "since_start_ms",
                        at >= 0 && start >= 0 ? json_integer(at - start) : json_null());
    return s;
}

/* The trace of order: its traceparent's trace id when it has one, else
 * its id (the `trace` of its saga's log lines and stream entries). */
static json_t *trace_json(const json_t *order)
{
    const char *tp = json_string_value(json_object_get(order, "traceparent"));
    const char *id = json_string_value(json_object_get(order, "id"));

    if (tp != NULL && strlen(tp) == 55 && tp[2] == '-' && tp[35] == '-')
        return json_pack("{s:s%, s:s, s:s}", "id", tp + 3, (size_t)32, "traceparent", tp, "source",
                         "traceparent");
    return json_pack("{s:s?, s:n, s:s}", "id", id, "traceparent", "source", "order id");
}

static json_t *saga_json(json_t *order)
{
    const json_t *timeline = json_object_get(order, "timeline");
    const char *status = json_string_value(json_object_get(order, "status"));
    json_t *lanes = json_pack("[s]", ORCHESTRATOR), *steps = json_array();
    long long start = -1, prev = -1, at = -1;
    size_t i;
    json_t *e;

    json_array_foreach(timeline, i, e)
    {
        at = iso_ms(json_string_value(json_object_get(e, "at")));
        if (i == 0)
            start = at;
        json_array_append_new(steps, step_json(e, i + 1, start, prev, lanes));
        prev = at;
    }
    return json_pack(
        "{s:O, s:o, s:b, s:o, s:o, s:o}", "order", order, "trace", trace_json(order), "final",
        status && (strcmp(status, "CONFIRMED") == 0 || strcmp(status, "REJECTED") == 0 ||
                   strcmp(status, "CANCELLED") == 0),
        "total_ms", start >= 0 && at >= 0 ? json_integer(at - start) : json_null(), "lanes", lanes,
        "steps", steps);
}

/* ---------------------------------------------------------------------------
 * Asking orders
 * ------------------------------------------------------------------------- */

static void ask_answer(struct ask *a, const struct http_client_response *res)
{
    json_t *body = NULL, *out;

    if (res->error == 0 && res->status == 200)
        body = json_loadb(res->body, res->body_len, 0, NULL);
    if (body != NULL) {
        out = a->one ? saga_json(body) : json_incref(body);
        json_decref(body);
        console_headers(a->req, "no-store");
        if (out != NULL)
            http_reply_json(a->req, 200, out);
        else
            http_reply_error(a->req, 500, NULL, "out of memory");
    } else if (res->error == 0 && res->status == 404 && a->one) {
        http_reply_error(a->req, 404, NULL, "orders knows no such order");
    } else if (res->error == 0 && res->status != 0) {
        log_warn("console: orders answered %d", res->status);
        http_reply_error(a->req, 502, NULL, "orders answered with an error");
    } else {
        http_reply_error(a->req, 503, NULL, "orders is unavailable");
    }
}

static void on_orders_answer(const struct http_client_response *res, void *data)
{
    struct ask *a = data;
    struct console *c = a->c;

    log_scope(c->svc->module->name);
    ask_answer(a, res);
    free(a);
    c->inflight--;
    console_maybe_stopped(c);
}

/* Sends GET <orders>/api/v1/orders<tail>. Returns 0 or a negative errno. */
static int ask_send(struct ask *a, const char *tail)
{
    const struct console_target *t = console_target(a->c, ORCHESTRATOR);
    const char *token = service_token(a->c->svc);
    char url[CONSOLE_URL_MAX + 128], authz[AUTH_MAX_TOKEN + 32];
    struct http_client_request r = {
        .target = ORCHESTRATOR,
        .method = "GET",
        .url = url,
        .headers = {authz, "Accept: application/json", NULL},
        .idempotent = 1,
    };
    int n;

    if (t == NULL || token == NULL || a->c->svc->http_client == NULL)
        return -ECANCELED;
    n = snprintf(url, sizeof(url), "%s/api/v1/orders%s", t->url, tail);
    if (n < 0 || (size_t)n >= sizeof(url))
        return -ENAMETOOLONG;
    n = snprintf(authz, sizeof(authz), "Authorization: Bearer %s", token);
    if (n < 0 || (size_t)n >= sizeof(authz))
        return -ENAMETOOLONG;
    return http_client_send(a->c->svc->http_client, &r, on_orders_answer, a);
}

static void ask(struct console *c, struct http_request *req, int one, const char *tail)
{
    struct ask *a;

    if (c->stopping) {
        http_reply_error(req, 503, NULL, "the console is stopping");
        return;
    }
    if (console_target(c, ORCHESTRATOR) == NULL) {
        http_reply_error(req, 404, NULL, "the console watches no orders service");
        return;
    }
    a = malloc(sizeof(*a));
    if (a == NULL) {
        http_reply_error(req, 500, NULL, "out of memory");
        return;
    }
    *a = (struct ask){.c = c, .req = req, .one = one};
    if (ask_send(a, tail) < 0) {
        free(a);
        http_reply_error(req, 503, NULL, "cannot ask orders now");
        return;
    }
    c->inflight++;
}

static void on_order(struct http_request *req, const struct auth_claims *who, void *data)
{
    const char *id = http_request_param(req, "id");
    char canon[IDS_UUID_LEN + 1], tail[IDS_UUID_LEN + 2];

    (void)who;
    if (id == NULL || ids_canonical(id, strlen(id), canon) < 0) {
        http_reply_error(req, 404, NULL, "an order id is a UUID");
        return;
    }
    snprintf(tail, sizeof(tail), "/%s", canon);
    ask(data, req, 1, tail);
}

static void on_list(struct http_request *req, const struct auth_claims *who, void *data)
{
    char buf[8], tail[32];
    int n = http_request_query(req, "limit", buf, sizeof(buf));
    long limit = CONSOLE_LIST_DEFAULT;
    char *end;

    (void)who;
    if (n >= 0) {
        limit = strtol(buf, &end, 10);
        if (n == 0 || *end != '\0' || limit < 1 || limit > CONSOLE_LIST_MAX) {
            json_t *fields = json_pack("{s:s}", "limit", "must be an integer from 1 to 100");

            http_reply_invalid(req, fields);
            return;
        }
    } else if (n != -ENOENT) {
        http_reply_invalid(req, json_pack("{s:s}", "limit", "must be an integer from 1 to 100"));
        return;
    }
    snprintf(tail, sizeof(tail), "?limit=%ld", limit);
    ask(data, req, 0, tail);
}

static const struct openapi_route doc_list = {
    .summary = "Recent orders (the orders service's list, everyone's)",
    .description = "Public, read-only: the console asks orders with its service token and "
                   "answers the page as orders gave it.",
    .params =
        (const struct openapi_param[]){
            OPENAPI_QUERY("limit", "1 to 100 (default 20).",
                          "{\"type\":\"integer\",\"minimum\":1,\"maximum\":100}"),
            OPENAPI_END_PARAMS},
    .responses =
        (const struct openapi_response[]){
            OPENAPI_ANSWER(200, "A page of orders, as GET /api/v1/orders answers it.",
                           "{\"type\":\"object\",\"required\":[\"items\",\"next\"],\"properties\":{"
                           "\"items\":{\"type\":\"array\",\"items\":{\"type\":\"object\"}},"
                           "\"next\":{\"type\":[\"string\",\"null\"]}}}"),
            OPENAPI_ERROR(404, "The console watches no orders service."),
            OPENAPI_ERROR(422, "A bad limit (`fields`)."),
            OPENAPI_ERROR(502, "orders answered with an error."),
            OPENAPI_ERROR(503, "orders is unavailable, or the console is stopping."), OPENAPI_END},
};

static const struct openapi_route doc_order = {
    .summary = "One order's saga: its timeline as a sequence across the services",
    .params = (const struct openapi_param[]){OPENAPI_PATH("id", "The order's id.", OPENAPI_UUID),
                                             OPENAPI_END_PARAMS},
    .responses =
        (const struct openapi_response[]){
            OPENAPI_ANSWER(
                200, "The order, its trace, and its steps with the lanes they go between.",
                "{\"type\":\"object\",\"required\":[\"order\",\"trace\",\"final\",\"total_ms\","
                "\"lanes\",\"steps\"],\"properties\":{\"order\":{\"type\":\"object\"},"
                "\"trace\":{\"type\":\"object\",\"required\":[\"id\",\"traceparent\",\"source\"],"
                "\"properties\":{\"id\":{\"type\":[\"string\",\"null\"]},"
                "\"traceparent\":{\"type\":[\"string\",\"null\"]},\"source\":{\"type\":\"string\"}}"
                "},"
                "\"final\":{\"type\":\"boolean\"},\"total_ms\":{\"type\":[\"integer\",\"null\"]},"
                "\"lanes\":{\"type\":\"array\",\"items\":{\"type\":\"string\"}},"
                "\"steps\":{\"type\":\"array\",\"items\":{\"type\":\"object\",\"required\":[\"n\","
                "\"step\",\"from\",\"to\",\"since_prev_ms\",\"since_start_ms\"],\"properties\":{"
                "\"n\":{\"type\":\"integer\"},\"step\":{\"type\":\"string\"},"
                "\"from\":{\"type\":\"string\"},\"to\":{\"type\":\"string\"},"
                "\"since_prev_ms\":{\"type\":[\"integer\",\"null\"]},"
                "\"since_start_ms\":{\"type\":[\"integer\",\"null\"]}}}}}}"),
            OPENAPI_ERROR(404, "No such order, or not a UUID, or no orders service watched."),
            OPENAPI_ERROR(502, "orders answered with an error."),
            OPENAPI_ERROR(503, "orders is unavailable, or the console is stopping."), OPENAPI_END},
};

void console_orders_routes(struct console *c)
{
    service_route_doc(c->svc, "GET", "/api/v1/console/orders", HTTP_ROUTE_PUBLIC, &doc_list,
                      on_list, c);
    service_route_doc(c->svc, "GET", "/api/v1/console/orders/{id}", HTTP_ROUTE_PUBLIC, &doc_order,
                      on_order, c);
}
