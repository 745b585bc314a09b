/* console.c -- the console module's start and stop, its settings, the page
 * and its assets. See console.h.
 *
 * Settings (each also as CONSOLE_<VAR>, which wins):
 *   SERVICES        name=URL pairs, comma-separated ("orders=http://h:8002");
 *                   unset: the modules hosted beside the console, or when it
 *                   is hosted alone the four services on their default ports
 *   ALLOW_WRITES    1 allows dead-letter replay (with a service token)
 *   REFRESH_MS      the page's polling period (default 2000)
 *   CACHE_MS        a report is reused this long (default 1000)
 *   DLQ_LETTERS     last dead letters shown per stream (default 10)
 *   MAX_STREAMS     streams reported at most (default 64)
 *
 * The struct console is shared by every route; the stop hook frees it once
 * nothing of ours is in flight: the HTTP server has stopped dispatching by
 * then (it closes before the hooks run), the HTTP client cancels our
 * requests when it closes, and Redis answers (or fails) what we sent. */
#include "console.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include <ripple/http_reply.h>
#include <ripple/http_server.h>
#include <ripple/log.h>
#include <ripple/metrics.h>
#include <ripple/service.h>

#define CONSOLE_DEFAULT_SERVICES                                                                   \
    "users=http://127.0.0.1:8001,orders=http://127.0.0.1:8002,"                                    \
    "inventory=http://127.0.0.1:8003,payments=http://127.0.0.1:8004"

/* Everything the page loads comes from here: the CSP forbids the rest. */
#define CONSOLE_CSP                                                                                \
    "default-src 'self'; img-src 'self' data:; base-uri 'none'; frame-ancestors 'none'"

/* ---------------------------------------------------------------------------
 * Settings: the services watched
 * ------------------------------------------------------------------------- */

static int name_ok(const char *s, size_t len)
{
    if (len == 0 || len >= CONSOLE_NAME_MAX || s[0] < 'a' || s[0] > 'z')
        return 0;
    for (size_t i = 0; i < len; i++) {
        char ch = s[i];

        if (!((ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || ch == '-'))
            return 0;
    }
    return 1;
}

/* An http:// URL with a host, no white space, path, query or fragment;
 * trailing slashes dropped. */
static int url_ok(const char *s, size_t len, char out[CONSOLE_URL_MAX])
{
    while (len > 0 && s[len - 1] == '/')
        len--;
    if (len <= 7 || len >= CONSOLE_URL_MAX || strncmp(s, "http://", 7) != 0)
        return 0;
    for (size_t i = 7; i < len; i++) {
        unsigned char ch = (unsigned char)s[i];

        if (ch <= ' ' || ch >= 0x7f || ch == '/' || ch == '?' || ch == '#' || ch == '@')
            return 0;
    }
    memcpy(out, s, len);
    out[len] = '\0';
    return 1;
}

/* Adds one "name=url" pair. Returns 0 or -EINVAL. */
static int target_add(struct console *c, const char *pair, size_t len)
{
    const char *eq = memchr(pair, '=', len);
    struct console_target *t;

    if (eq == NULL || c->ntargets == CONSOLE_MAX_TARGETS || !name_ok(pair, (size_t)(eq - pair)))
        return -EINVAL;
    t = &c->targets[c->ntargets];
    if (!url_ok(eq + 1, len - (size_t)(eq + 1 - pair), t->url))
        return -EINVAL;
    memcpy(t->name, pair, (size_t)(eq - pair));
    t->name[eq - pair] = '\0';
    if (console_target(c, t->name) != NULL)
        return -EINVAL; /* a name twice */
    c->ntargets++;
    return 0;
}

static int targets_parse(struct console *c, const char *list)
{
    const char *p = list;

    while (*p != '\0') {
        size_t n = strcspn(p, ",");

        if (n > 0 && target_add(c, p, n) < 0)
            return -EINVAL;
        p += n + (p[n] == ',');
    }
    return c->ntargets > 0 ? 0 : -EINVAL;
}

/* The modules hosted beside the console, on loopback when they listen on
 * every address. Returns the number added. */
static size_t targets_from_peers(struct console *c)
{
    const struct service *svc = c->svc;

    for (size_t i = 0; i < svc->n_peers && c->ntargets < CONSOLE_MAX_TARGETS; i++) {
        const struct service *p = &svc->peers[i];
        struct console_target *t = &c->targets[c->ntargets];
        const char *host = p->cfg.host;
        int n;

        if (p == svc || strlen(p->module->name) >= CONSOLE_NAME_MAX)
            continue;
        if (strcmp(host, "0.0.0.0") == 0 || strcmp(host, "::") == 0)
            host = "127.0.0.1";
        n = snprintf(t->url, sizeof(t->url), strchr(host, ':') ? "http://[%s]:%u" : "http://%s:%u",
                     host, p->cfg.port);
        if (n < 0 || (size_t)n >= sizeof(t->url))
            continue;
        snprintf(t->name, sizeof(t->name), "%s", p->module->name);
        t->local = 1;
        c->ntargets++;
    }
    return c->ntargets;
}

static void settings_read(struct console *c)
{
    struct service *svc = c->svc;
    const char *list = service_setting_str(svc, "SERVICES", "", 0);

    c->allow_writes = (int)service_setting_uint(svc, "ALLOW_WRITES", 0, 0, 1);
    c->refresh_ms = (unsigned)service_setting_uint(svc, "REFRESH_MS", 2000, 250, 600000);
    c->cache_ms = (unsigned)service_setting_uint(svc, "CACHE_MS", 1000, 0, 60000);
    c->dlq_letters = (unsigned)service_setting_uint(svc, "DLQ_LETTERS", 10, 0, 100);
    c->max_streams = (unsigned)service_setting_uint(svc, "MAX_STREAMS", 64, 1, 1000);
    if (list[0] != '\0') {
        if (targets_parse(c, list) < 0)
            service_fatal(svc,
                          "config: %sSERVICES (or SERVICES) must be name=http://host:port pairs, "
                          "comma-separated, at most %d, names [a-z][a-z0-9-]* and unique",
                          svc->cfg.prefix, CONSOLE_MAX_TARGETS);
        return;
    }
    if (targets_from_peers(c) == 0 && targets_parse(c, CONSOLE_DEFAULT_SERVICES) < 0)
        service_fatal(svc, "config: the default services do not parse");
}

int console_stream_ok(const char *s, size_t len)
{
    if (len == 0 || len > CONSOLE_STREAM_MAX)
        return 0;
    for (size_t i = 0; i < len; i++) {
        char ch = s[i];

        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              ch == '.' || ch == '_' || ch == ':' || ch == '-'))
            return 0;
    }
    return 1;
}

int console_entry_id_ok(const char *s)
{
    size_t n = strspn(s, "0123456789");

    if (n == 0 || n > 20)
        return 0;
    if (s[n] == '\0')
        return 1;
    if (s[n] != '-')
        return 0;
    s += n + 1;
    n = strspn(s, "0123456789");
    return n > 0 && n <= 20 && s[n] == '\0';
}

const struct console_target *console_target(const struct console *c, const char *name)
{
    for (size_t i = 0; i < c->ntargets; i++)
        if (strcmp(c->targets[i].name, name) == 0)
            return &c->targets[i];
    return NULL;
}

/* ---------------------------------------------------------------------------
 * Waiting requests
 * ------------------------------------------------------------------------- */

int console_wait(struct console_waiters *w, struct http_request *req)
{
    if (w->n == CONSOLE_MAX_WAITERS) {
        http_reply_error(req, 503, NULL, "too many requests wait for this report; retry");
        return -ENOSPC;
    }
    w->reqs[w->n++] = req;
    return 0;
}

void console_answer(struct console_waiters *w, json_t *report, int status, const char *message)
{
    size_t n = w->n;

    /* Emptied first: an answer never re-enters this list, but be safe. */
    w->n = 0;
    for (size_t i = 0; i < n; i++) {
        struct http_request *req = w->reqs[i];

        console_headers(req, "no-store");
        if (report != NULL)
            http_reply_json(req, 200, json_incref(report));
        else
            http_reply_error(req, status, NULL, message);
    }
}

/* ---------------------------------------------------------------------------
 * The page and its assets
 * ------------------------------------------------------------------------- */

const struct console_asset *console_asset_find(const char *path)
{
    for (size_t i = 0; i < console_assets_count; i++)
        if (strcmp(console_assets[i].path, path) == 0)
            return &console_assets[i];
    return NULL;
}

void console_headers(struct http_request *req, const char *cache_control)
{
    if (http_add_header(req, "Content-Security-Policy", CONSOLE_CSP) < 0 ||
        http_add_header(req, "X-Content-Type-Options", "nosniff") < 0 ||
        http_add_header(req, "Cache-Control", cache_control) < 0)
        log_debug("console: a response header did not fit");
}

static void serve(struct http_request *req, const struct console_asset *a)
{
    console_headers(req, "no-cache");
    http_respond(req, 200, a->content_type, (const char *)a->data, a->len);
}

/* GET / and GET /orders/{id}: the page; it reads the path itself. */
static void on_page(struct http_request *req, const struct auth_claims *who, void *data)
{
    const struct console_asset *a = console_asset_find("index.html");

    (void)who;
    (void)data;
    if (a == NULL) {
        http_reply_error(req, 500, NULL, "the page is missing from this build");
        return;
    }
    serve(req, a);
}

/* GET /assets/{name}: the page's files; the Lua scripts are not served. */
static void on_asset(struct http_request *req, const struct auth_claims *who, void *data)
{
    const char *name = http_request_param(req, "name");
    const struct console_asset *a = name ? console_asset_find(name) : NULL;
    size_t len = name ? strlen(name) : 0;

    (void)who;
    (void)data;
    if (a == NULL || (len > 4 && strcmp(name + len - 4, ".lua") == 0)) {
        http_reply_error(req, 404, NULL, "no such asset");
        return;
    }
    serve(req, a);
}

/* GET /api/v1/console/info: what the page needs before its first report. */
static void on_info(struct http_request *req, const struct auth_claims *who, void *data)
{
    struct console *c = data;
    json_t *names = json_array();
    json_t *body;

    (void)who;
    for (size_t i = 0; names != NULL && i < c->ntargets; i++)
        json_array_append_new(names, json_string(c->targets[i].name));
    body = json_pack("{s:s, s:b, s:o*, s:i, s:b, s:i}", "console", c->svc->cfg.service, "writes",
                     c->allow_writes, "services", names, "refresh_ms", (json_int_t)c->refresh_ms,
                     "orders", console_target(c, "orders") != NULL, "dlq_letters",
                     (json_int_t)c->dlq_letters);
    if (body == NULL) {
        http_reply_error(req, 500, NULL, "out of memory");
        return;
    }
    console_headers(req, "no-store");
    http_reply_json(req, 200, body);
}

/* ---------------------------------------------------------------------------
 * Start and stop
 * ------------------------------------------------------------------------- */

double console_rss_bytes(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    unsigned long size, resident;
    int n;

    if (f == NULL)
        return NAN;
    n = fscanf(f, "%lu %lu", &size, &resident);
    fclose(f);
    if (n != 2)
        return NAN;
    return (double)resident * (double)sysconf(_SC_PAGESIZE);
}

void console_maybe_stopped(struct console *c)
{
    void (*done)(struct service *) = c->stop_done;
    struct service *svc = c->svc;

    if (done == NULL || c->inflight > 0)
        return;
    c->stop_done = NULL;
    metrics_gauge_detach(svc->metrics, c);
    console_services_release(c);
    console_streams_release(c);
    free(c);
    done(svc);
}

static void on_stop(struct service *svc, void *data, service_stop_done_cb done)
{
    struct console *c = data;

    (void)svc;
    c->stopping = 1;
    c->stop_done = done;
    console_maybe_stopped(c);
}

/* The routes' description (ripple/openapi.h): GET /api/v1/openapi.json. */

static const struct openapi_route doc_page = {
    .summary = "The console's page",
    .responses = (const struct openapi_response[]){OPENAPI_MEDIA(200, "The page.", "text/html"),
                                                   OPENAPI_END},
};

static const struct openapi_route doc_order_page = {
    .summary = "The console's page, showing one order's saga",
    .params = (const struct openapi_param[]){OPENAPI_PATH("id", "The order's id.", NULL),
                                             OPENAPI_END_PARAMS},
    .responses = (const struct openapi_response[]){OPENAPI_MEDIA(200, "The page.", "text/html"),
                                                   OPENAPI_END},
};

static const struct openapi_route doc_asset = {
    .summary = "A file of the page (script, styles, icon)",
    .params =
        (const struct openapi_param[]){OPENAPI_PATH("name", "A file name, e.g. app.js.", NULL),
                                       OPENAPI_END_PARAMS},
    .responses =
        (const struct openapi_response[]){OPENAPI_MEDIA(200, "The file.", "*/*"),
                                          OPENAPI_ERROR(404, "No such asset."), OPENAPI_END},
};

static const struct openapi_route doc_info = {
    .summary = "What the page needs before its first report",
    .responses =
        (const struct openapi_response[]){
            OPENAPI_ANSWER(
                200, "The console's settings.",
                "{\"type\":\"object\",\"required\":[\"console\",\"writes\",\"services\","
                "\"refresh_ms\",\"orders\",\"dlq_letters\"],\"additionalProperties\":false,"
                "\"properties\":{\"console\":{\"type\":\"string\"},"
                "\"writes\":{\"type\":\"boolean\"},\"services\":{\"type\":\"array\","
                "\"items\":{\"type\":\"string\"}},\"refresh_ms\":{\"type\":\"integer\"},"
                "\"orders\":{\"type\":\"boolean\",\"description\":\"Whether an orders "
                "service is watched.\"},\"dlq_letters\":{\"type\":\"integer\"}}}"),
            OPENAPI_ERROR(500, "Out of memory."), OPENAPI_END},
};

static int console_start(struct service *svc)
{
    struct console *c = calloc(1, sizeof(*c));

    if (c == NULL)
        return -ENOMEM;
    c->svc = svc;
    settings_read(c);
    /* Before the client's own hook: nothing new starts once the stop began. */
    service_on_stop(svc, on_stop, c);
    service_http_client(svc);
    service_openapi(svc,
                    "The console: a read-only page over every service and stream (dead "
                    "letter replay with CONSOLE_ALLOW_WRITES=1 and a service token).",
                    NULL);
    service_route_doc(svc, "GET", "/", HTTP_ROUTE_PUBLIC, &doc_page, on_page, c);
    service_route_doc(svc, "GET", "/orders/{id}", HTTP_ROUTE_PUBLIC, &doc_order_page, on_page, c);
    service_route_doc(svc, "GET", "/assets/{name}", HTTP_ROUTE_PUBLIC, &doc_asset, on_asset, c);
    service_route_doc(svc, "GET", "/api/v1/console/info", HTTP_ROUTE_PUBLIC, &doc_info, on_info, c);
    console_services_routes(c);
    console_streams_routes(c);
    console_replay_routes(c);
    console_orders_routes(c);
    log_info("console: watching %zu service(s)%s", c->ntargets,
             c->allow_writes ? "; dead-letter replay allowed with a service token" : "");
    return 0;
}

MODULE_DEFINE(console, 8000, NULL, NULL, NULL, console_start);
