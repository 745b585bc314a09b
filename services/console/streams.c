/* streams.c -- the streams in Redis, their groups and their dead letters;
 * replaying a dead letter. See console.h.
 *
 * GET /api/v1/console/streams: SCAN (TYPE stream, a bounded number of
 * rounds) finds the streams; every <stream>.dlq is shown with its stream.
 * Then one EVAL of streams.lua (embedded) reads XINFO STREAM, GROUPS and
 * CONSUMERS, XLEN and the last dead letters of every stream in one round
 * trip, as JSON. As for services, requests that arrive meanwhile wait for
 * the same report, which is reused for CONSOLE_CACHE_MS.
 *
 * POST /api/v1/console/streams/{stream}/dlq/{id}/replay runs
 * scripts/dlq.d/replay.lua, the script scripts/dlq replay runs: 403 unless
 * CONSOLE_ALLOW_WRITES=1 and the token is a service token (a missing or bad
 * token is the dispatcher's 401); 404 when the dead letter is not there. */
#include "console.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <hiredis/hiredis.h>
#include <jansson.h>

#include <ripple/clock.h>
#include <ripple/http_reply.h>
#include <ripple/http_server.h>
#include <ripple/log.h>
#include <ripple/redis.h>
#include <ripple/service.h>
#include <ripple/streams.h>

#define SCAN_COUNT "500"     /* keys SCAN looks at per round */
#define SCAN_MAX_ROUNDS 64   /* then the report says truncated */
#define LETTER_BYTES "400"   /* of a dead letter's data or error */
#define CONSUMERS_SHOWN "16" /* per group */

/* A stream report being gathered. */
struct console_gather {
    struct console *c;
    char **names; /* the streams (no .dlq), sorted at the end; new */
    size_t n, cap;
    unsigned rounds;
    int truncated;
    char cursor[32];
};

/* ---------------------------------------------------------------------------
 * Small helpers
 * ------------------------------------------------------------------------- */

static const char *script(const char *path)
{
    const struct console_asset *a = console_asset_find(path);

    /* Embedded text with no NUL inside: scripts/embed-assets appends one. */
    return a != NULL ? (const char *)a->data : NULL;
}

static int by_name(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static void gather_free(struct console_gather *g)
{
    for (size_t i = 0; i < g->n; i++)
        free(g->names[i]);
    free(g->names);
    free(g);
}

/* cjson writes an empty array as {}: make every empty object of the
 * report's list fields an array again. */
static void fix_lists(json_t *stream)
{
    static const char *const lists[] = {"groups", "consumer_list", "letters"};
    const char *key;
    json_t *v;

    json_object_foreach(stream, key, v)
    {
        int is_list = 0;

        for (size_t i = 0; i < ARRAY_SIZE(lists); i++)
            is_list |= strcmp(key, lists[i]) == 0;
        if (is_list && json_is_object(v) && json_object_size(v) == 0)
            json_object_set_new(stream, key, json_array());
        else if (json_is_object(v))
            fix_lists(v);
        else if (json_is_array(v))
            for (size_t i = 0; i < json_array_size(v); i++)
                fix_lists(json_array_get(v, i));
    }
}

/* ---------------------------------------------------------------------------
 * Gathering the report
 * ------------------------------------------------------------------------- */

static void gather_done(struct console_gather *g, json_t *items, int status, const char *why)
{
    struct console *c = g->c;
    json_t *report = NULL;

    c->gather = NULL;
    if (items != NULL)
        report = json_pack("{s:o, s:b, s:I}", "items", items, "truncated", g->truncated, "at_ms",
                           (json_int_t)clock_now_ms());
    gather_free(g);
    if (report != NULL) {
        json_decref(c->streams_report);
        c->streams_report = report;
        c->streams_at = uv_now(c->svc->loop);
    }
    console_answer(&c->streams_wait, report, report ? 200 : status, why);
}

/* Where a reply is an error or missing: answers the waiters and returns 1. */
static int gather_failed(struct console_gather *g, const redisReply *reply, int want)
{
    if (reply == NULL) {
        gather_done(g, NULL, 503, "Redis is unavailable");
        return 1;
    }
    if (reply->type == REDIS_REPLY_ERROR) {
        log_warn("console: Redis refused the stream report: %.*s", (int)reply->len, reply->str);
        gather_done(g, NULL, 502, "Redis refused the stream report");
        return 1;
    }
    if (reply->type != want) {
        gather_done(g, NULL, 502, "Redis answered the stream report unexpectedly");
        return 1;
    }
    return 0;
}

static void on_report(struct redis *r, redisReply *reply, void *data)
{
    struct console_gather *g = data;
    struct console *c = g->c;
    json_t *items;

    (void)r;
    log_scope(c->svc->module->name);
    c->inflight--;
    if (!gather_failed(g, reply, REDIS_REPLY_STRING)) {
        items = json_loadb(reply->str, reply->len, 0, NULL);
        if (json_is_object(items) && json_object_size(items) == 0) { /* no stream: cjson's {} */
            json_decref(items);
            items = json_array();
        }
        if (json_is_array(items)) {
            for (size_t i = 0; i < json_array_size(items); i++)
                fix_lists(json_array_get(items, i));
            gather_done(g, items, 200, NULL);
        } else {
            json_decref(items);
            gather_done(g, NULL, 502, "the stream report is not JSON");
        }
    }
    console_maybe_stopped(c);
}

/* The EVAL of streams.lua with every stream and its .dlq as KEYS; the
 * strings in argv are borrowed from g and dlqs. */
struct report_args {
    const char **argv;
    size_t *lens;
    char **dlqs; /* new, g->n of them */
    size_t n;
    char numkeys[24], letters[16];
};

static void report_args_release(struct report_args *a, size_t nstreams)
{
    for (size_t i = 0; a->dlqs != NULL && i < nstreams; i++)
        free(a->dlqs[i]);
    free(a->dlqs);
    free(a->argv);
    free(a->lens);
}

static int report_args_build(struct report_args *a, struct console_gather *g)
{
    size_t cap = 3 + 2 * g->n + 3;

    a->argv = calloc(cap, sizeof(*a->argv));
    a->lens = calloc(cap, sizeof(*a->lens));
    a->dlqs = calloc(g->n + 1, sizeof(*a->dlqs));
    if (a->argv == NULL || a->lens == NULL || a->dlqs == NULL || script("streams.lua") == NULL)
        return -ENOMEM;
    snprintf(a->numkeys, sizeof(a->numkeys), "%zu", 2 * g->n);
    snprintf(a->letters, sizeof(a->letters), "%u", g->c->dlq_letters);
    a->argv[a->n++] = "EVAL";
    a->argv[a->n++] = script("streams.lua");
    a->argv[a->n++] = a->numkeys;
    for (size_t i = 0; i < g->n; i++) {
        size_t len = strlen(g->names[i]) + sizeof(STREAMS_DLQ_SUFFIX);

        a->dlqs[i] = malloc(len);
        if (a->dlqs[i] == NULL || streams_dlq_name(g->names[i], a->dlqs[i], len) < 0)
            return -ENOMEM;
        a->argv[a->n++] = g->names[i];
        a->argv[a->n++] = a->dlqs[i];
    }
    a->argv[a->n++] = a->letters;
    a->argv[a->n++] = LETTER_BYTES;
    a->argv[a->n++] = CONSUMERS_SHOWN;
    for (size_t i = 0; i < a->n; i++)
        a->lens[i] = strlen(a->argv[i]);
    return 0;
}

static int report_send(struct console_gather *g)
{
    struct report_args a = {0};
    int rc;

    qsort(g->names, g->n, sizeof(*g->names), by_name);
    rc = report_args_build(&a, g);
    if (rc == 0)
        rc = redis_command(g->c->svc->redis, on_report, g, (int)a.n, a.argv, a.lens);
    report_args_release(&a, g->n);
    return rc;
}

/* Adds stream name (a .dlq counts as its stream) unless it is there. */
static int gather_add(struct console_gather *g, const char *name, size_t len)
{
    size_t sfx = strlen(STREAMS_DLQ_SUFFIX);

    if (len > sfx && memcmp(name + len - sfx, STREAMS_DLQ_SUFFIX, sfx) == 0)
        len -= sfx;
    if (!console_stream_ok(name, len))
        return 0;
    for (size_t i = 0; i < g->n; i++)
        if (strlen(g->names[i]) == len && memcmp(g->names[i], name, len) == 0)
            return 0;
    if (g->n == g->c->max_streams) {
        g->truncated = 1;
        return 0;
    }
    if (g->n == g->cap) {
        size_t cap = g->cap ? g->cap * 2 : 16;
        char **names = realloc(g->names, cap * sizeof(*names));

        if (names == NULL)
            return -ENOMEM;
        g->names = names;
        g->cap = cap;
    }
    g->names[g->n] = strndup(name, len);
    if (g->names[g->n] == NULL)
        return -ENOMEM;
    g->n++;
    return 0;
}

static int scan_send(struct console_gather *g);

/* Takes one SCAN answer; returns 1 when the scan is over. */
static int scan_take(struct console_gather *g, const redisReply *reply)
{
    const redisReply *keys;

    if (reply->elements != 2 || reply->element[0]->type != REDIS_REPLY_STRING ||
        reply->element[1]->type != REDIS_REPLY_ARRAY)
        return -EPROTO;
    keys = reply->element[1];
    for (size_t i = 0; i < keys->elements; i++)
        if (keys->element[i]->type == REDIS_REPLY_STRING &&
            gather_add(g, keys->element[i]->str, keys->element[i]->len) < 0)
            return -ENOMEM;
    snprintf(g->cursor, sizeof(g->cursor), "%.*s", (int)reply->element[0]->len,
             reply->element[0]->str);
    if (strcmp(g->cursor, "0") == 0)
        return 1;
    if (++g->rounds >= SCAN_MAX_ROUNDS) {
        g->truncated = 1;
        return 1;
    }
    return 0;
}

static void on_scan(struct redis *r, redisReply *reply, void *data)
{
    struct console_gather *g = data;
    struct console *c = g->c;
    int rc;

    (void)r;
    log_scope(c->svc->module->name);
    c->inflight--;
    if (!gather_failed(g, reply, REDIS_REPLY_ARRAY)) {
        rc = scan_take(g, reply);
        if (rc == 0)
            rc = scan_send(g);
        else if (rc == 1)
            rc = report_send(g);
        if (rc < 0)
            gather_done(g, NULL, 503, "cannot gather the stream report now");
        else
            c->inflight++;
    }
    console_maybe_stopped(c);
}

static int scan_send(struct console_gather *g)
{
    const char *argv[] = {"SCAN", g->cursor, "MATCH", "*", "TYPE", "stream", "COUNT", SCAN_COUNT};
    size_t lens[ARRAY_SIZE(argv)];

    for (size_t i = 0; i < ARRAY_SIZE(argv); i++)
        lens[i] = strlen(argv[i]);
    return redis_command(g->c->svc->redis, on_scan, g, (int)ARRAY_SIZE(argv), argv, lens);
}

static void on_streams(struct http_request *req, const struct auth_claims *who, void *data)
{
    struct console *c = data;
    struct console_gather *g;

    (void)who;
    if (c->stopping) {
        http_reply_error(req, 503, NULL, "the console is stopping");
        return;
    }
    if (c->gather == NULL && c->streams_report != NULL &&
        uv_now(c->svc->loop) - c->streams_at < c->cache_ms) {
        console_headers(req, "no-store");
        http_reply_json(req, 200, json_incref(c->streams_report));
        return;
    }
    if (console_wait(&c->streams_wait, req) < 0 || c->gather != NULL)
        return;
    g = calloc(1, sizeof(*g));
    if (g == NULL) {
        console_answer(&c->streams_wait, NULL, 500, "out of memory");
        return;
    }
    g->c = c;
    snprintf(g->cursor, sizeof(g->cursor), "0");
    c->gather = g;
    if (scan_send(g) < 0)
        gather_done(g, NULL, 503, "Redis is unavailable");
    else
        c->inflight++;
}

static const struct openapi_route doc_streams = {
    .summary = "Every stream: length, groups, consumers, lag and last dead letters",
    .description = "Public, read-only; read from Redis in one round trip, reused for "
                   "CONSOLE_CACHE_MS.",
    .responses =
        (const struct openapi_response[]){
            OPENAPI_ANSWER(200, "The report.",
                           "{\"type\":\"object\",\"required\":[\"items\",\"truncated\",\"at_ms\"],"
                           "\"properties\":{\"items\":{\"type\":\"array\",\"items\":{\"type\":"
                           "\"object\"}},\"truncated\":{\"type\":\"boolean\"},"
                           "\"at_ms\":{\"type\":\"integer\"}}}"),
            OPENAPI_ERROR(503,
                          "Redis is unavailable, too many requests wait for the report, or the "
                          "console is stopping."),
            OPENAPI_END},
};

void console_streams_routes(struct console *c)
{
    service_route_doc(c->svc, "GET", "/api/v1/console/streams", HTTP_ROUTE_PUBLIC, &doc_streams,
                      on_streams, c);
}

void console_streams_release(struct console *c)
{
    json_decref(c->streams_report);
    c->streams_report = NULL;
}
