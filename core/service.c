/* service.c -- a hosted module's life cycle and its HTTP dispatcher. See
 * service.h.
 *
 * Owns the module's stop timer, HTTP server, registry of metrics, store,
 * outbox and Redis connection; the loop and the signals are the host's.
 * Stopping is a state: service_stop starts it, the HTTP server finishes what
 * it has in hand, stop hooks report back, the outbox flushes, Redis closes,
 * and the host is told. Every callback that enters this file from the loop
 * sets the log scope to the module first. */
#include <ripple/service.h>

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include <ripple/http_client.h>
#include <ripple/http_reply.h>
#include <ripple/http_server.h>
#include <ripple/log.h>
#include <ripple/metrics.h>
#include <ripple/openapi.h>
#include <ripple/outbox.h>
#include <ripple/redis.h>
#include <ripple/store.h>
#include <ripple/trace.h>

#define STATS_SLOTS 256 /* (route, status) pairs cached; more fall back to lookups */

static const double duration_bounds[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                                         0.05,   0.1,   0.25,   0.5,   1.0,  2.5};

/* Cache of the dispatcher's series, so a request costs no label formatting. */
struct service_stats {
    struct metrics_counter *commits, *txns; /* the store's COMMITs, the transactions in them */
    struct metrics_counter *wal_bytes;      /* what the COMMITs wrote to the WAL */
    uint64_t commits_seen, txns_seen, wal_bytes_seen;
    struct {
        const char *route; /* borrowed: a route's pattern, or a literal */
        int status;        /* 0: the duration histogram of route */
        void *series;
    } slots[STATS_SLOTS];
};

CORE_NORETURN void service_fatal(const struct service *svc, const char *fmt, ...)
{
    va_list ap;

    fprintf(stderr, "%s: ", svc->cfg.service ? svc->cfg.service : "ripple");
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(1);
}

/* ---------------------------------------------------------------------------
 * Metrics of the dispatcher
 * ------------------------------------------------------------------------- */

static void service_open_redis(struct service *svc);

static void *stats_series(struct service *svc, const char *route, int status)
{
    struct service_stats *st = svc->stats_;
    size_t h = (((uintptr_t)route >> 4) * 31 + (size_t)status) % STATS_SLOTS;
    char esc[256], labels[320];
    void *series;

    for (size_t i = 0; i < STATS_SLOTS; i++, h = (h + 1) % STATS_SLOTS) {
        if (st->slots[h].route == route && st->slots[h].status == status)
            return st->slots[h].series;
        if (st->slots[h].route == NULL)
            break;
    }
    if (metrics_escape_label(route, esc, sizeof(esc)) < 0)
        return NULL;
    if (status == 0) {
        snprintf(labels, sizeof(labels), "route=\"%s\"", esc);
        series = metrics_histogram(svc->metrics, "http_request_duration_seconds",
                                   "Time from request received to response queued.", labels,
                                   duration_bounds, ARRAY_SIZE(duration_bounds));
    } else {
        snprintf(labels, sizeof(labels), "route=\"%s\",code=\"%d\"", esc, status);
        series = metrics_counter(svc->metrics, "http_requests_total",
                                 "HTTP requests answered, by route and status.", labels);
    }
    if (series != NULL && st->slots[h].route == NULL) {
        st->slots[h].route = route;
        st->slots[h].status = status;
        st->slots[h].series = series;
    }
    return series;
}

static void on_response(const struct http_request *req, int status, double seconds, void *data)
{
    struct service *svc = data;
    struct metrics_counter *c = stats_series(svc, req->route, status);
    struct metrics_histogram *h = stats_series(svc, req->route, 0);

    if (c != NULL)
        metrics_counter_add(c, 1);
    if (h != NULL)
        metrics_histogram_observe(h, seconds);
}

/* ---------------------------------------------------------------------------
 * The dispatcher
 * ------------------------------------------------------------------------- */

static void on_request(struct http_request *req, void *data)
{
    struct service *svc = data;
    size_t len = 0;
    const char *tp = http_request_header(req, "traceparent", &len);
    char parent[TRACE_PARENT_LEN + 1];

    log_scope(svc->module->name);
    /* continue the caller's trace, or start one (an invalid header too) */
    trace_child(tp != NULL && trace_parse(tp, len, parent) == 0 ? parent : NULL, req->traceparent);
    trace_set(req->traceparent);
    /* the reads of this iteration's GETs share one read transaction */
    if (svc->store != NULL && (strcmp(req->method, "GET") == 0 || strcmp(req->method, "HEAD") == 0))
        (void)store_read_begin(svc->store);
    http_router_dispatch(svc->router, &svc->auth, (long)time(NULL), req);
    trace_set(NULL);
}

/* ---------------------------------------------------------------------------
 * Built-in routes: /healthz, /readyz, /metrics
 * ------------------------------------------------------------------------- */

/* process_resident_memory_bytes: /proc/self/statm's resident pages. NaN
 * when it cannot be read (not Linux). */
static double gauge_rss(void *data)
{
    FILE *f = fopen("/proc/self/statm", "r");
    unsigned long size, resident;
    int n;

    (void)data;
    if (f == NULL)
        return NAN;
    n = fscanf(f, "%lu %lu", &size, &resident);
    fclose(f);
    return n == 2 ? (double)resident * (double)sysconf(_SC_PAGESIZE) : NAN;
}

static void on_healthz(struct http_request *req, const struct auth_claims *who, void *data)
{
    static const char body[] = "{\"status\":\"ok\"}";

    (void)who;
    (void)data;
    http_respond(req, 200, "application/json", body, sizeof(body) - 1);
}

/* The database check: "ok", "down" (it does not answer) or "unwritable"
 * (a write failed on a store fault -- disk full, a lock held elsewhere, an
 * I/O error -- and nothing has been written since). */
static const char *database_check(struct service *svc)
{
    if (svc->module->schema == NULL)
        return "none"; /* a stateless module: no database to check */
    if (svc->store == NULL || store_ping(svc->store) < 0)
        return "down";
    return store_writable(svc->store) ? "ok" : "unwritable";
}

static void on_readyz(struct http_request *req, const struct auth_claims *who, void *data)
{
    struct service *svc = data;
    const char *db = database_check(svc);
    int db_ok = strcmp(db, "ok") == 0 || strcmp(db, "none") == 0;
    int redis_ok = redis_is_up(svc->redis);
    int ready = db_ok && redis_ok && !svc->stopping_;
    char body[160];
    int n;

    (void)who;
    n = snprintf(body, sizeof(body),
                 "{\"status\":\"%s\",\"checks\":{\"database\":\"%s\",\"redis\":\"%s\"}}",
                 ready ? "ready" : (svc->stopping_ ? "stopping" : "unavailable"), db,
                 redis_ok ? "ok" : "down");
    http_respond(req, ready ? 200 : 503, "application/json", body, (size_t)n);
}

static void on_metrics(struct http_request *req, const struct auth_claims *who, void *data)
{
    struct service *svc = data;
    char *text;
    size_t len;

    (void)who;
    if (metrics_render(svc->metrics, &text, &len) < 0) {
        http_reply_error(req, 500, NULL, "could not render the metrics");
        return;
    }
    http_respond(req, 200, "text/plain; version=0.0.4", text, len);
    free(text);
}

/* ---------------------------------------------------------------------------
 * Built-in routes: the OpenAPI document and its page
 * ------------------------------------------------------------------------- */

#ifndef RIPPLE_VERSION_STRING
#define RIPPLE_VERSION_STRING "0.0.0" /* the Makefile passes RIPPLE_VERSION */
#endif

/* The page loads nothing but its own files (the renderer sets inline
 * styles, never inline scripts). */
#define DOCS_CSP                                                                                   \
    "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "                 \
    "base-uri 'none'; frame-ancestors 'none'"

static void docs_headers(struct http_request *req, const char *cache_control)
{
    if (http_add_header(req, "Content-Security-Policy", DOCS_CSP) < 0 ||
        http_add_header(req, "X-Content-Type-Options", "nosniff") < 0 ||
        http_add_header(req, "Cache-Control", cache_control) < 0)
        log_debug("http: a docs header did not fit");
}

static void on_openapi(struct http_request *req, const struct auth_claims *who, void *data)
{
    struct service *svc = data;

    (void)who;
    if (svc->openapi_ == NULL) { /* not reached: built before the service listens */
        http_reply_error(req, 503, NULL, "the document is not built yet");
        return;
    }
    if (http_add_header(req, "Cache-Control", "no-cache") < 0)
        log_debug("http: Cache-Control did not fit");
    http_respond(req, 200, "application/json", svc->openapi_, svc->openapi_len_);
}

static void serve_docs_file(struct http_request *req, const char *name, const char *cache)
{
    const struct openapi_asset *a = openapi_asset_find(name);

    if (a == NULL) {
        http_reply_error(req, 404, NULL, "no such file");
        return;
    }
    docs_headers(req, cache);
    http_respond(req, 200, a->content_type, (const char *)a->data, a->len);
}

static void on_docs(struct http_request *req, const struct auth_claims *who, void *data)
{
    (void)who;
    (void)data;
    serve_docs_file(req, "index.html", "no-cache");
}

static void on_docs_file(struct http_request *req, const struct auth_claims *who, void *data)
{
    const char *name = http_request_param(req, "file");

    (void)who;
    (void)data;
    serve_docs_file(req, name ? name : "", "max-age=3600");
}

static const struct openapi_route doc_healthz = {
    .summary = "Liveness: the process answers",
    .tag = "runtime",
    .responses = (const struct openapi_response[]){
        OPENAPI_ANSWER(200, "Alive.",
                       "{\"type\":\"object\",\"required\":[\"status\"],"
                       "\"properties\":{\"status\":{\"const\":\"ok\"}}}"),
        OPENAPI_END}};

#define READY_SCHEMA                                                                               \
    "{\"type\":\"object\",\"required\":[\"status\",\"checks\"],\"properties\":{"                   \
    "\"status\":{\"enum\":[\"ready\",\"unavailable\",\"stopping\"]},"                              \
    "\"checks\":{\"type\":\"object\",\"required\":[\"database\",\"redis\"],\"properties\":{"       \
    "\"database\":{\"enum\":[\"ok\",\"down\",\"unwritable\",\"none\"]},"                           \
    "\"redis\":{\"enum\":[\"ok\",\"down\"]}}}}}"
static const struct openapi_route doc_readyz = {
    .summary = "Readiness: the database open and Redis connected",
    .description = "Depends on this service's own database and Redis only, never on other "
                   "services. A module without a database reports `\"database\": \"none\"`.",
    .tag = "runtime",
    .responses = (const struct openapi_response[]){
        OPENAPI_ANSWER(200, "Ready.", READY_SCHEMA),
        OPENAPI_ANSWER(503, "Not ready (the checks say why), or stopping.", READY_SCHEMA),
        OPENAPI_END}};

static const struct openapi_route doc_metrics = {
    .summary = "Prometheus metrics",
    .description = "The Prometheus text format (version 0.0.4): HTTP requests and durations by "
                   "route, consumers, outbox, store and HTTP client series.",
    .tag = "runtime",
    .responses = (const struct openapi_response[]){
        OPENAPI_MEDIA(200, "The metrics.", "text/plain"),
        OPENAPI_ERROR(500, "The metrics could not be rendered."), OPENAPI_END}};

static const struct openapi_route doc_openapi = {
    .summary = "This service's OpenAPI 3.1 document",
    .description = "Built from the routes the service serves and what each declares beside it.",
    .tag = "runtime",
    .responses = (const struct openapi_response[]){
        OPENAPI_ANSWER(200, "The document.",
                       "{\"type\":\"object\",\"required\":[\"openapi\",\"info\",\"paths\"],"
                       "\"properties\":{\"openapi\":{\"type\":\"string\"},"
                       "\"info\":{\"type\":\"object\"},\"paths\":{\"type\":\"object\"}}}"),
        OPENAPI_END}};

static const struct openapi_route doc_docs = {
    .summary = "The document rendered for people (Swagger UI)",
    .description = "Its scripts and styles come from this service (`/api/docs/{file}`), "
                   "embedded at build time; nothing is loaded from elsewhere.",
    .tag = "runtime",
    .responses = (const struct openapi_response[]){OPENAPI_MEDIA(200, "The page.", "text/html"),
                                                   OPENAPI_END}};

static const struct openapi_route doc_docs_file = {
    .summary = "A file of the docs page (the renderer's script and styles)",
    .tag = "runtime",
    .params =
        (const struct openapi_param[]){
            OPENAPI_PATH("file", "A file name, e.g. swagger-ui-bundle.js.",
                         "{\"type\":\"string\",\"pattern\":\"^[A-Za-z0-9._-]+$\"}"),
            OPENAPI_END_PARAMS},
    .responses = (const struct openapi_response[]){
        OPENAPI_MEDIA(200, "The file.", "*/*"), OPENAPI_ERROR(404, "No such file."), OPENAPI_END}};

static void service_build_openapi(struct service *svc)
{
    struct openapi_info info = {
        .title = svc->module->name,
        .version = RIPPLE_VERSION_STRING,
        .description = svc->api_description_,
        .schemas = svc->api_schemas_,
    };
    char err[512];
    json_t *doc;
    int rc = openapi_build(svc->router, &info, &doc, err, sizeof(err));

    if (rc < 0)
        service_fatal(svc, "%s", err);
    free(svc->openapi_);
    svc->openapi_ = json_dumps(doc, JSON_INDENT(2));
    json_decref(doc);
    if (svc->openapi_ == NULL)
        service_fatal(svc, "out of memory");
    svc->openapi_len_ = strlen(svc->openapi_);
    for (size_t i = 0; http_router_route(svc->router, i) != NULL; i++) {
        const struct http_route *rt = http_router_route(svc->router, i);

        log_debug("route %s %s%s", rt->method, rt->pattern,
                  rt->flags & HTTP_ROUTE_PUBLIC ? " (public)" : "");
    }
}

void service_openapi(struct service *svc, const char *description,
                     const struct openapi_schema *schemas)
{
    svc->api_description_ = description;
    svc->api_schemas_ = schemas;
}

/* ---------------------------------------------------------------------------
 * Set-up
 * ------------------------------------------------------------------------- */

void service_init(struct service *svc, uv_loop_t *loop, const struct module *m, int shared)
{
    char err[CONFIG_ERR_MAX];

    memset(svc, 0, sizeof(*svc));
    svc->module = m;
    svc->loop = loop;
    log_scope(m->name);
    if (config_load(&svc->cfg, m->name, m->default_port, shared, err, sizeof(err)) < 0)
        service_fatal(svc, "%s", err);
    if (auth_init(&svc->auth, svc->cfg.jwt_secret) < 0)
        service_fatal(svc, "config: JWT_SECRET must be %d to %d bytes", AUTH_MIN_SECRET,
                      AUTH_MAX_SECRET);
    if (auth_cache_enable(&svc->auth) < 0)
        service_fatal(svc, "out of memory");
    svc->stats_ = calloc(1, sizeof(*svc->stats_));
    if (svc->stats_ == NULL || metrics_new(&svc->metrics) < 0 || http_router_new(&svc->router) < 0)
        service_fatal(svc, "out of memory");
    uv_timer_init(loop, &svc->stop_timer_);
    svc->stop_timer_.data = svc;
    if (metrics_gauge(svc->metrics, "process_resident_memory_bytes",
                      "Resident memory of the process (in a host of several modules: all of "
                      "them).",
                      "", gauge_rss, svc) < 0)
        service_fatal(svc, "out of memory");
    service_open_redis(svc);
    service_route_doc(svc, "GET", "/healthz", HTTP_ROUTE_PUBLIC, &doc_healthz, on_healthz, svc);
    service_route_doc(svc, "GET", "/readyz", HTTP_ROUTE_PUBLIC, &doc_readyz, on_readyz, svc);
    service_route_doc(svc, "GET", "/metrics", HTTP_ROUTE_PUBLIC, &doc_metrics, on_metrics, svc);
    service_route_doc(svc, "GET", "/api/v1/openapi.json", HTTP_ROUTE_PUBLIC, &doc_openapi,
                      on_openapi, svc);
    service_route_doc(svc, "GET", "/api/docs", HTTP_ROUTE_PUBLIC, &doc_docs, on_docs, svc);
    service_route_doc(svc, "GET", "/api/docs/{file}", HTTP_ROUTE_PUBLIC, &doc_docs_file,
                      on_docs_file, svc);
}

unsigned long service_setting_uint(const struct service *svc, const char *var, unsigned long def,
                                   unsigned long min, unsigned long max)
{
    char err[CONFIG_ERR_MAX];
    unsigned long v;

    if (config_uint_for(svc->cfg.prefix, var, def, min, max, &v, err, sizeof(err)) < 0)
        service_fatal(svc, "%s", err);
    return v;
}

const char *service_setting_str(const struct service *svc, const char *var, const char *def,
                                size_t min_len)
{
    char err[CONFIG_ERR_MAX];
    const char *v;

    if (config_str_for(svc->cfg.prefix, var, def, min_len, &v, err, sizeof(err)) < 0)
        service_fatal(svc, "%s", err);
    return v;
}

static void service_open_redis(struct service *svc)
{
    struct redis_config rc = {
        .url = svc->cfg.redis_url,
        .name = "commands",
        .log_scope = svc->module->name,
        .command_timeout_ms = 10000,
    };
    char err[CONFIG_ERR_MAX];

    if (redis_new(svc->loop, &rc, &svc->redis, err, sizeof(err)) < 0)
        service_fatal(svc, "%s", err);
}

/* A commit hook: the counters follow the store's own counts. */
static void count_commits(struct store *st, void *data)
{
    struct service_stats *stats = ((struct service *)data)->stats_;
    uint64_t commits, txns, wal;

    store_commit_counts(st, &commits, &txns);
    metrics_counter_add(stats->commits, commits - stats->commits_seen);
    metrics_counter_add(stats->txns, txns - stats->txns_seen);
    stats->commits_seen = commits;
    stats->txns_seen = txns;
    wal = store_wal_bytes(st);
    metrics_counter_add(stats->wal_bytes, wal - stats->wal_bytes_seen);
    stats->wal_bytes_seen = wal;
}

/* http_server_hold_answers: an answer waits for its writes' group commit. */
static int hold_answer(void *data, http_release_cb release, void *arg)
{
    struct service *svc = data;

    return store_when_durable(svc->store, release, arg);
}

void service_open_store(struct service *svc)
{
    const struct config *cfg = &svc->cfg;
    const char *schema = svc->module->schema;
    struct outbox_config oc = {
        .source = cfg->service,
        .emits = svc->module->emits,
        .log_scope = svc->module->name,
        .batch = cfg->outbox_batch,
        .maxlen = cfg->stream_maxlen,
        .max_backlog = cfg->outbox_max_backlog,
        .retention_ms = cfg->outbox_retention_ms,
    };
    int rc;

    if (schema == NULL)
        service_fatal(svc, "the module declares no schema: it has no database to open");
    rc = store_open(cfg->db_path, schema, &svc->store);
    if (rc < 0)
        service_fatal(svc, "cannot open the database DB_PATH=%s: %s", cfg->db_path, strerror(-rc));
    rc = store_offload_checkpoints(svc->store, svc->loop);
    if (rc < 0)
        service_fatal(svc, "cannot set up background checkpoints for DB_PATH=%s", cfg->db_path);
    if (service_setting_uint(svc, "GROUP_COMMIT", 1, 0, 1)) {
        rc = store_group_commit(svc->store, svc->loop, svc->module->name);
        if (rc < 0)
            service_fatal(svc, "cannot set up group commit: %s", uv_strerror(rc));
    } else {
        log_warn("GROUP_COMMIT=0: every transaction commits on its own");
    }
    svc->stats_->commits = metrics_counter(
        svc->metrics, "store_commits_total",
        "SQLite COMMITs (with group commit, one per loop iteration that wrote).", "");
    svc->stats_->txns =
        metrics_counter(svc->metrics, "store_transactions_total",
                        "Transactions (store_begin .. store_commit) those COMMITs carried.", "");
    svc->stats_->wal_bytes = metrics_counter(
        svc->metrics, "store_wal_bytes_total",
        "Bytes those COMMITs wrote to the write-ahead log: a whole page (and a 24-byte header) "
        "for every page a group changed.",
        "");
    if (svc->stats_->commits == NULL || svc->stats_->txns == NULL || svc->stats_->wal_bytes == NULL)
        service_fatal(svc, "out of memory");
    if (store_on_commit(svc->store, count_commits, svc) < 0)
        service_fatal(svc, "cannot count the store's commits");
    rc = outbox_new(svc, &oc, &svc->outbox);
    if (rc < 0)
        service_fatal(svc, "cannot open the outbox in DB_PATH=%s: %s", cfg->db_path, strerror(-rc));
}

#define SERVICE_TOKEN_TTL 300 /* s */

static void on_client_closed(void *data)
{
    struct service *svc = data;

    svc->http_client = NULL;
    svc->client_done_(svc);
}

static void on_client_stop(struct service *svc, void *data, service_stop_done_cb done)
{
    (void)data;
    svc->client_done_ = done;
    http_client_close(svc->http_client, on_client_closed, svc);
}

struct http_client *service_http_client(struct service *svc)
{
    const struct config *cfg = &svc->cfg;
    struct http_client_config hc = {
        .timeout_ms = cfg->http_client_timeout_ms,
        .attempts = cfg->http_client_attempts,
        .deadline_ms = cfg->http_client_deadline_ms,
        .backoff_ms = 50,
        .breaker_failures = cfg->http_client_breaker_failures,
        .breaker_cooldown_ms = cfg->http_client_breaker_cooldown_ms,
        .max_response_bytes = 1 << 20,
        .max_cache_entries = 100000,
        .log_scope = svc->module->name,
    };
    int rc;

    if (svc->http_client != NULL)
        return svc->http_client;
    rc = http_client_new(svc->loop, &hc, svc->metrics, &svc->http_client);
    if (rc < 0)
        service_fatal(svc, "cannot create the HTTP client: %s", strerror(-rc));
    service_on_stop(svc, on_client_stop, NULL);
    return svc->http_client;
}

const char *service_token(struct service *svc)
{
    char sub[64];
    long now = (long)time(NULL);

    if (svc->token_ != NULL && svc->token_exp_ - now > 60)
        return svc->token_;
    free(svc->token_);
    svc->token_ = NULL;
    snprintf(sub, sizeof(sub), "service:%s", svc->cfg.service);
    if (auth_sign(&svc->auth, sub, "service", SERVICE_TOKEN_TTL, &svc->token_) < 0)
        return NULL;
    svc->token_exp_ = now + SERVICE_TOKEN_TTL;
    return svc->token_;
}

int service_shed_write(struct service *svc, struct http_request *req)
{
    if (svc->outbox == NULL || !outbox_overloaded(svc->outbox))
        return 0;
    if (http_add_header(req, "Retry-After", "5") < 0)
        log_debug("http: Retry-After did not fit");
    http_reply_error(req, 503, NULL,
                     "too many events wait to be published (Redis unreachable); retry later");
    return 1;
}

void service_route(struct service *svc, const char *method, const char *pattern, unsigned flags,
                   http_handler_cb handler, void *data)
{
    service_route_doc(svc, method, pattern, flags, NULL, handler, data);
}

void service_route_doc(struct service *svc, const char *method, const char *pattern, unsigned flags,
                       const struct openapi_route *doc, http_handler_cb handler, void *data)
{
    int rc = http_router_add_doc(svc->router, method, pattern, flags, doc, handler, data);

    if (rc < 0)
        service_fatal(svc, "route %s %s: %s", method, pattern, strerror(-rc));
}

void service_on_stop(struct service *svc, service_stop_cb fn, void *data)
{
    if (svc->nstop_hooks_ == SERVICE_MAX_STOP_HOOKS)
        service_fatal(svc, "too many stop hooks");
    svc->stop_hooks_[svc->nstop_hooks_].fn = fn;
    svc->stop_hooks_[svc->nstop_hooks_].data = data;
    svc->nstop_hooks_++;
}

/* ---------------------------------------------------------------------------
 * Stopping
 * ------------------------------------------------------------------------- */

#define OUTBOX_FLUSH_MS 2000 /* at most, while stopping (and never past the deadline) */

/* The last step: the stop timer is closed, nothing of ours is left on the
 * loop but the store, which service_release closes. */
static void on_stop_timer_closed(uv_handle_t *h)
{
    struct service *svc = h->data;

    log_scope(svc->module->name);
    log_info("stopped");
    if (svc->stopped_cb_ != NULL)
        svc->stopped_cb_(svc, svc->stopped_data_);
}

static void on_redis_closed(void *data)
{
    struct service *svc = data;

    log_scope(svc->module->name);
    svc->redis = NULL;
    if (svc->store != NULL) /* nothing writes any more: the last group commits */
        store_group_end(svc->store);
    uv_close((uv_handle_t *)&svc->stop_timer_, on_stop_timer_closed);
}

static void on_outbox_closed(void *data)
{
    struct service *svc = data;

    log_scope(svc->module->name);
    svc->outbox = NULL;
    redis_close(svc->redis, on_redis_closed, svc);
}

/* How long the outbox may drain: OUTBOX_FLUSH_MS, cut short by the stop
 * deadline (0 past it: close at once). */
static unsigned flush_budget_ms(const struct service *svc)
{
    uint64_t now = uv_now(svc->loop);
    uint64_t left = svc->stop_deadline_ > now ? svc->stop_deadline_ - now : 0;

    return left < OUTBOX_FLUSH_MS ? (unsigned)left : OUTBOX_FLUSH_MS;
}

/* Called as each part of the first phase (HTTP, stop hooks) is done; the
 * last one moves on to the outbox, then Redis. */
static void stop_part_done(struct service *svc)
{
    log_scope(svc->module->name);
    if (--svc->stops_pending_ > 0)
        return;
    if (svc->outbox != NULL)
        outbox_close(svc->outbox, flush_budget_ms(svc), on_outbox_closed, svc);
    else
        on_outbox_closed(svc);
}

static void on_http_closed(void *data)
{
    struct service *svc = data;

    metrics_gauge_detach(svc->metrics, svc->http_);
    svc->http_ = NULL;
    stop_part_done(svc);
}

/* The deadline bounds everything, whatever Redis does: HTTP connections are
 * closed, and the Redis command connection is dropped for good, so every
 * reply still awaited -- a consumer's ack, the relay's XADDs -- arrives now
 * as NULL and the consumers and the outbox close (unpublished rows stay in
 * the outbox for the next start). Each consumer closes its own blocking
 * connection as it closes. */
static void on_stop_timeout(uv_timer_t *t)
{
    struct service *svc = t->data;

    log_scope(svc->module->name);
    log_warn("stop: still busy after %u ms; closing every connection, Redis's too",
             svc->cfg.shutdown_timeout_ms);
    if (svc->http_ != NULL)
        http_server_abort(svc->http_);
    if (svc->redis != NULL)
        redis_halt(svc->redis);
}

void service_stop(struct service *svc, service_stopped_cb stopped, void *data)
{
    if (svc->stopping_)
        return;
    log_scope(svc->module->name);
    svc->stopping_ = 1;
    svc->stopped_cb_ = stopped;
    svc->stopped_data_ = data;
    log_info("stopping: finishing the requests in hand");
    svc->stops_pending_ = 1 + svc->nstop_hooks_ + 1; /* http, hooks, this function */
    uv_update_time(svc->loop);
    svc->stop_deadline_ = uv_now(svc->loop) + svc->cfg.shutdown_timeout_ms;
    uv_timer_start(&svc->stop_timer_, on_stop_timeout, svc->cfg.shutdown_timeout_ms, 0);
    if (svc->http_ != NULL)
        http_server_close(svc->http_, on_http_closed, svc);
    else
        stop_part_done(svc);
    for (unsigned i = 0; i < svc->nstop_hooks_; i++)
        svc->stop_hooks_[i].fn(svc, svc->stop_hooks_[i].data, stop_part_done);
    stop_part_done(svc);
}

/* ---------------------------------------------------------------------------
 * Running
 * ------------------------------------------------------------------------- */

static double gauge_http_connections(void *data)
{
    return (double)http_server_connections(data);
}

static int service_listen(struct service *svc)
{
    const struct config *cfg = &svc->cfg;
    struct http_server_config hc = {
        .host = cfg->host,
        .port = cfg->port,
        .max_header_bytes = cfg->http_max_header_bytes,
        .max_headers = cfg->http_max_headers,
        .max_body_bytes = cfg->http_max_body_bytes,
        .max_connections = cfg->http_max_connections,
        .header_timeout_ms = cfg->http_header_timeout_ms,
        .idle_timeout_ms = cfg->http_idle_timeout_ms,
        .log_scope = svc->module->name,
        .body_timeout_ms = cfg->http_body_timeout_ms,
    };
    int rc;

    rc = http_server_new(svc->loop, &hc, on_request, on_response, svc, &svc->http_);
    if (rc < 0) {
        log_error("http: cannot create the server: %s", strerror(-rc));
        return rc;
    }
    if (svc->store != NULL)
        http_server_hold_answers(svc->http_, hold_answer, svc);
    rc = http_server_listen(svc->http_);
    if (rc < 0) {
        log_error("http: cannot listen on %s:%u: %s", cfg->host, cfg->port, uv_strerror(rc));
        return rc;
    }
    rc = metrics_gauge(svc->metrics, "http_connections",
                       "Open HTTP connections, idle keep-alive ones included.", "",
                       gauge_http_connections, svc->http_);
    if (rc < 0)
        return rc;
    log_info("listening on http://%s:%u", cfg->host, http_server_port(svc->http_));
    return 0;
}

void service_release(struct service *svc)
{
    auth_cache_free(&svc->auth);
    store_close(svc->store);
    svc->store = NULL;
    http_router_free(svc->router);
    svc->router = NULL;
    metrics_free(svc->metrics);
    svc->metrics = NULL;
    free(svc->stats_);
    svc->stats_ = NULL;
    free(svc->token_);
    svc->token_ = NULL;
    free(svc->openapi_);
    svc->openapi_ = NULL;
}

int service_start(struct service *svc)
{
    log_scope(svc->module->name);
    service_build_openapi(svc);
    redis_start(svc->redis);
    return service_listen(svc);
}
