/* services.c -- GET /api/v1/console/services: how each watched service is.
 *
 * A scrape asks every target for /healthz, /readyz and /metrics at once
 * through the service's HTTP client (one attempt each: a console should
 * show a failure, not hide it behind retries; the client's breaker makes a
 * dead service fail fast). When the last answer is in, the report is built,
 * kept for CONSOLE_CACHE_MS, and every request that waited gets it. Rates
 * (HTTP requests and 5xx per second) and publish-latency quantiles are taken
 * between this scrape and the one before, when there was one within
 * RATE_WINDOW_MAX_MS; otherwise rates are null and quantiles cover the
 * service's life.
 *
 * RSS: a service's process_resident_memory_bytes when its /metrics has it;
 * for a module hosted in this process, the console's own process (a
 * monolith has one RSS for all its modules). */
#include "console.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include <ripple/auth.h>
#include <ripple/clock.h>
#include <ripple/http_client.h>
#include <ripple/http_reply.h>
#include <ripple/http_server.h>
#include <ripple/log.h>
#include <ripple/service.h>

#define RATE_WINDOW_MAX_MS 120000 /* older samples do not make a rate */
#define SCRAPE_KINDS 3

enum scrape_kind { SCRAPE_HEALTH, SCRAPE_READY, SCRAPE_METRICS };

static const char *const scrape_paths[SCRAPE_KINDS] = {"/healthz", "/readyz", "/metrics"};

/* One request of a scrape: which target, which path. */
struct scrape_req {
    struct console_scrape *s;
    size_t target;
    enum scrape_kind kind;
};

struct console_scrape {
    struct console *c;
    unsigned pending;
    struct scrape_req reqs[CONSOLE_MAX_TARGETS * SCRAPE_KINDS];
};

/* ---------------------------------------------------------------------------
 * The report
 * ------------------------------------------------------------------------- */

/* A number, or null when it is NaN or infinite. */
static json_t *num(double v)
{
    return isfinite(v) ? json_real(v) : json_null();
}

static json_t *num_int(double v)
{
    return isfinite(v) ? json_integer((json_int_t)llround(v)) : json_null();
}

static json_t *outbox_json(const struct console_target *t, const struct console_sample *prev)
{
    double n50, n99;
    double p50 = console_quantile(&t->cur, prev, 0.5, &n50);
    double p99 = console_quantile(&t->cur, prev, 0.99, &n99);

    return json_pack("{s:o, s:o, s:{s:o, s:o, s:o, s:s}}", "backlog", num_int(t->cur.backlog),
                     "oldest_unpublished_age_s", num(t->cur.oldest_age_s), "publish_latency_ms",
                     "p50", num(p50 * 1000), "p99", num(p99 * 1000), "count", num_int(n50),
                     "window",
                     prev != NULL && prev->lat_count < t->cur.lat_count ? "recent" : "lifetime");
}

static json_t *http_json(const struct console_target *t, const struct console_sample *prev)
{
    double secs = prev ? (double)(t->cur.at_ms - prev->at_ms) / 1000.0 : 0;
    double rate = NAN, errors = NAN, ratio = NAN;

    if (prev != NULL && secs > 0 && t->cur.http_total >= prev->http_total) {
        double dn = t->cur.http_total - prev->http_total;
        double de = t->cur.http_errors - prev->http_errors;

        rate = dn / secs;
        errors = de / secs;
        ratio = dn > 0 ? de / dn : 0;
    }
    return json_pack("{s:o, s:o, s:o, s:o, s:o, s:o}", "requests_per_s", num(rate), "errors_per_s",
                     num(errors), "error_ratio", num(ratio), "requests_total",
                     num_int(t->cur.http_total), "errors_total", num_int(t->cur.http_errors),
                     "window_s", prev ? num(secs) : json_null());
}

static json_t *rss_json(const struct console *c, const struct console_target *t)
{
    double rss = t->cur.rss_bytes;
    const char *from = "metrics";

    (void)c;
    if (!isfinite(rss) && t->local) {
        rss = console_rss_bytes();
        from = "host process";
    }
    return json_pack("{s:o, s:s?}", "bytes", num_int(rss), "source", isfinite(rss) ? from : NULL);
}

static const char *health_word(const struct console_target *t)
{
    if (t->health_status == 200)
        return "up";
    return t->health_status == 0 ? "down" : "unhealthy";
}

static json_t *target_json(const struct console *c, const struct console_target *t)
{
    const struct console_sample *prev = t->prev.at_ms != 0 && t->cur.at_ms > t->prev.at_ms &&
                                                t->cur.at_ms - t->prev.at_ms <= RATE_WINDOW_MAX_MS
                                            ? &t->prev
                                            : NULL;
    int have = t->metrics_status == 200;

    return json_pack("{s:s, s:s, s:s, s:s, s:s?, s:o, s:O?, s:o, s:o, s:o}", "name", t->name, "url",
                     t->url, "hosted", t->local ? "this process" : "remote", "health",
                     health_word(t), "error", t->error[0] ? t->error : NULL, "ready",
                     t->ready_status ? json_boolean(t->ready_status == 200) : json_null(), "checks",
                     t->ready_checks, "rss", rss_json(c, t), "outbox",
                     have ? outbox_json(t, prev) : json_null(), "http",
                     have ? http_json(t, prev) : json_null());
}

static json_t *report_build(struct console *c)
{
    json_t *items = json_array();

    for (size_t i = 0; items != NULL && i < c->ntargets; i++)
        if (json_array_append_new(items, target_json(c, &c->targets[i])) < 0)
            log_debug("console: a service's report was left out (out of memory)");
    return json_pack("{s:o*, s:I}", "items", items, "at_ms", (json_int_t)clock_now_ms());
}

/* ---------------------------------------------------------------------------
 * The scrape
 * ------------------------------------------------------------------------- */

static void scrape_finish(struct console_scrape *s)
{
    struct console *c = s->c;

    c->scrape = NULL;
    free(s);
    json_decref(c->services_report);
    c->services_report = report_build(c);
    c->services_at = uv_now(c->svc->loop);
    console_answer(&c->services_wait, c->services_report, 500,
                   "out of memory while building the report");
}

static void take_ready(struct console_target *t, const struct http_client_response *res)
{
    json_t *body = json_loadb(res->body, res->body_len, 0, NULL);
    json_t *checks = json_object_get(body, "checks");

    json_decref(t->ready_checks);
    t->ready_checks = json_is_object(checks) ? json_incref(checks) : NULL;
    json_decref(body);
}

static void take_answer(struct console *c, struct console_target *t, enum scrape_kind kind,
                        const struct http_client_response *res)
{
    int status = res->error == 0 ? res->status : 0;

    if (status == 0 && t->error[0] == '\0')
        snprintf(t->error, sizeof(t->error), "%s: %s", scrape_paths[kind],
                 res->error_msg[0] ? res->error_msg : strerror(-res->error));
    if (kind == SCRAPE_HEALTH) {
        t->health_status = status;
    } else if (kind == SCRAPE_READY) {
        t->ready_status = status;
        if (status != 0)
            take_ready(t, res);
    } else {
        t->metrics_status = status;
        if (status == 200) {
            t->prev = t->cur;
            console_promtext_parse(res->body, res->body_len, &t->cur);
            t->cur.at_ms = uv_now(c->svc->loop);
        }
    }
}

static void on_scrape_answer(const struct http_client_response *res, void *data)
{
    struct scrape_req *r = data;
    struct console_scrape *s = r->s;
    struct console *c = s->c;

    log_scope(c->svc->module->name);
    take_answer(c, &c->targets[r->target], r->kind, res);
    c->inflight--;
    if (--s->pending == 0)
        scrape_finish(s);
    console_maybe_stopped(c);
}

static int scrape_send(struct console_scrape *s, struct scrape_req *r)
{
    struct console *c = s->c;
    const struct console_target *t = &c->targets[r->target];
    char url[CONSOLE_URL_MAX + 16];
    struct http_client_request hr = {
        .target = t->name,
        .method = "GET",
        .url = url,
        .headers = {NULL},
        .idempotent = 0, /* one attempt: show failures as they are */
    };

    snprintf(url, sizeof(url), "%s%s", t->url, scrape_paths[r->kind]);
    return http_client_send(c->svc->http_client, &hr, on_scrape_answer, r);
}

/* Starts a scrape of every target. Returns 0 (scrape_finish runs when the
 * last answer is in) or a negative errno. */
static int scrape_start(struct console *c)
{
    struct console_scrape *s;

    if (c->svc->http_client == NULL)
        return -ECANCELED;
    s = calloc(1, sizeof(*s));
    if (s == NULL)
        return -ENOMEM;
    s->c = c;
    c->scrape = s;
    s->pending = 1; /* until every request is sent */
    for (size_t i = 0; i < c->ntargets; i++) {
        c->targets[i].error[0] = '\0';
        for (unsigned k = 0; k < SCRAPE_KINDS; k++) {
            struct scrape_req *r = &s->reqs[i * SCRAPE_KINDS + k];
            struct http_client_response fail = {.error = -EIO, .error_msg = "could not send"};

            *r = (struct scrape_req){.s = s, .target = i, .kind = k};
            if (scrape_send(s, r) == 0) {
                s->pending++;
                c->inflight++;
            } else {
                take_answer(c, &c->targets[i], k, &fail);
            }
        }
    }
    if (--s->pending == 0)
        scrape_finish(s);
    return 0;
}

static void on_services(struct http_request *req, const struct auth_claims *who, void *data)
{
    struct console *c = data;

    (void)who;
    if (c->stopping) {
        http_reply_error(req, 503, NULL, "the console is stopping");
        return;
    }
    if (c->scrape == NULL && c->services_report != NULL &&
        uv_now(c->svc->loop) - c->services_at < c->cache_ms) {
        console_headers(req, "no-store");
        http_reply_json(req, 200, json_incref(c->services_report));
        return;
    }
    if (console_wait(&c->services_wait, req) < 0 || c->scrape != NULL)
        return;
    if (scrape_start(c) < 0)
        console_answer(&c->services_wait, NULL, 503, "cannot ask the services now");
}

static const struct openapi_route doc_services = {
    .summary = "Every watched service: health, readiness, memory, outbox and HTTP rates",
    .description = "Public, read-only; one scrape of every service's /healthz, /readyz and "
                   "/metrics, reused for CONSOLE_CACHE_MS.",
    .responses =
        (const struct openapi_response[]){
            OPENAPI_ANSWER(
                200, "The report.",
                "{\"type\":\"object\",\"required\":[\"items\",\"at_ms\"],\"properties\":{"
                "\"at_ms\":{\"type\":\"integer\"},\"items\":{\"type\":\"array\",\"items\":{"
                "\"type\":\"object\",\"required\":[\"name\",\"url\",\"hosted\",\"health\","
                "\"ready\",\"rss\",\"outbox\",\"http\"],\"properties\":{"
                "\"name\":{\"type\":\"string\"},\"url\":{\"type\":\"string\"},"
                "\"hosted\":{\"enum\":[\"this process\",\"remote\"]},"
                "\"health\":{\"type\":\"string\"},"
                "\"ready\":{\"type\":[\"boolean\",\"null\"]},"
                "\"rss\":{\"type\":\"object\"},\"outbox\":{\"type\":[\"object\","
                "\"null\"]},\"http\":{\"type\":[\"object\",\"null\"]}}}}}}"),
            OPENAPI_ERROR(503,
                          "Too many requests wait for the report, or the console is stopping."),
            OPENAPI_END},
};

void console_services_routes(struct console *c)
{
    service_route_doc(c->svc, "GET", "/api/v1/console/services", HTTP_ROUTE_PUBLIC, &doc_services,
                      on_services, c);
}

void console_services_release(struct console *c)
{
    for (size_t i = 0; i < c->ntargets; i++) {
        json_decref(c->targets[i].ready_checks);
        c->targets[i].ready_checks = NULL;
    }
    json_decref(c->services_report);
    c->services_report = NULL;
}
