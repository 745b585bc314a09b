/* service.c -- process lifecycle and the HTTP dispatcher. See service.h.
 *
 * Owns the loop (uv_default_loop), the signal handles, the stop timer, the
 * HTTP server and the registry of metrics. Stopping is a state: the first
 * signal starts it, the HTTP server finishes what it has in hand, stop hooks
 * report back, and when nothing is left the loop runs dry and is closed. */
#include "service.h"

#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "http_client.h"
#include "http_reply.h"
#include "http_server.h"
#include "log.h"
#include "metrics.h"
#include "outbox.h"
#include "redis.h"
#include "store.h"

#define STATS_SLOTS 256 /* (route, status) pairs cached; more fall back to lookups */

static const double duration_bounds[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                                         0.05,   0.1,   0.25,   0.5,   1.0,  2.5};

/* Cache of the dispatcher's series, so a request costs no label formatting. */
struct service_stats {
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

/* Raises the soft limit on open files to the hard one (each connection is
 * a descriptor), and says so when HTTP_MAX_CONNECTIONS cannot be reached. */
static void raise_fd_limit(const struct service *svc)
{
    struct rlimit rl;

    if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
        return;
    if (rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &rl) < 0 && getrlimit(RLIMIT_NOFILE, &rl) < 0)
            return;
    }
    if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < svc->cfg.http_max_connections + 64)
        log_warn("open files are limited to %llu: fewer than HTTP_MAX_CONNECTIONS=%u can be open",
                 (unsigned long long)rl.rlim_cur, svc->cfg.http_max_connections);
}

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

    http_router_dispatch(svc->router, &svc->auth, (long)time(NULL), req);
}

/* ---------------------------------------------------------------------------
 * Built-in routes: /healthz, /readyz, /metrics
 * ------------------------------------------------------------------------- */

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
    if (svc->store == NULL || store_ping(svc->store) < 0)
        return "down";
    return store_writable(svc->store) ? "ok" : "unwritable";
}

static void on_readyz(struct http_request *req, const struct auth_claims *who, void *data)
{
    struct service *svc = data;
    const char *db = database_check(svc);
    int db_ok = strcmp(db, "ok") == 0;
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
 * Set-up
 * ------------------------------------------------------------------------- */

void service_init(struct service *svc, const char *name, unsigned default_port)
{
    char err[CONFIG_ERR_MAX];
    enum log_level level;

    memset(svc, 0, sizeof(*svc));
    if (config_load(&svc->cfg, name, default_port, err, sizeof(err)) < 0)
        service_fatal(svc, "%s", err);
    if (log_parse_level(svc->cfg.log_level, &level) < 0)
        service_fatal(svc, "config: LOG_LEVEL is not a level");
    log_set_service(name);
    log_set_level(level);
    if (auth_init(&svc->auth, svc->cfg.jwt_secret) < 0)
        service_fatal(svc, "config: JWT_SECRET must be %d to %d bytes", AUTH_MIN_SECRET,
                      AUTH_MAX_SECRET);
    svc->stats_ = calloc(1, sizeof(*svc->stats_));
    if (svc->stats_ == NULL || metrics_new(&svc->metrics) < 0 || http_router_new(&svc->router) < 0)
        service_fatal(svc, "out of memory");
    raise_fd_limit(svc);
    svc->loop = uv_default_loop();
    srandom((unsigned)(uv_hrtime() ^ (uint64_t)getpid()));
    service_open_redis(svc);
    /* Writes to a socket the peer closed must fail with EPIPE, not kill us. */
    signal(SIGPIPE, SIG_IGN);
    service_route(svc, "GET", "/healthz", HTTP_ROUTE_PUBLIC, on_healthz, svc);
    service_route(svc, "GET", "/readyz", HTTP_ROUTE_PUBLIC, on_readyz, svc);
    service_route(svc, "GET", "/metrics", HTTP_ROUTE_PUBLIC, on_metrics, svc);
}

static void service_open_redis(struct service *svc)
{
    struct redis_config rc = {
        .url = svc->cfg.redis_url, .name = "commands", .command_timeout_ms = 10000};
    char err[CONFIG_ERR_MAX];

    if (redis_new(svc->loop, &rc, &svc->redis, err, sizeof(err)) < 0)
        service_fatal(svc, "%s", err);
}

void service_open_store(struct service *svc, const char *schema)
{
    const struct config *cfg = &svc->cfg;
    struct outbox_config oc = {
        .source = cfg->service,
        .batch = cfg->outbox_batch,
        .maxlen = cfg->stream_maxlen,
        .max_backlog = cfg->outbox_max_backlog,
        .retention_ms = cfg->outbox_retention_ms,
    };
    int rc = store_open(cfg->db_path, schema, &svc->store);

    if (rc < 0)
        service_fatal(svc, "cannot open the database DB_PATH=%s: %s", cfg->db_path, strerror(-rc));
    rc = store_offload_checkpoints(svc->store, svc->loop);
    if (rc < 0)
        service_fatal(svc, "cannot set up background checkpoints for DB_PATH=%s", cfg->db_path);
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
    int rc = http_router_add(svc->router, method, pattern, flags, handler, data);

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

static void on_handle_closed(uv_handle_t *h)
{
    struct service *svc = h->data;

    svc->closing_handles_--;
}

static void close_handle(struct service *svc, uv_handle_t *h)
{
    if (uv_is_closing(h))
        return;
    h->data = svc;
    svc->closing_handles_++;
    uv_close(h, on_handle_closed);
}

#define OUTBOX_FLUSH_MS 2000 /* at most, while stopping */

static void on_redis_closed(void *data)
{
    struct service *svc = data;

    svc->redis = NULL;
    close_handle(svc, (uv_handle_t *)&svc->stop_timer_);
    close_handle(svc, (uv_handle_t *)&svc->sigterm_);
    close_handle(svc, (uv_handle_t *)&svc->sigint_);
    log_info("stopped");
}

static void on_outbox_closed(void *data)
{
    struct service *svc = data;

    svc->outbox = NULL;
    redis_close(svc->redis, on_redis_closed, svc);
}

/* Called as each part of the first phase (HTTP, stop hooks) is done; the
 * last one moves on to the outbox, then Redis. */
static void stop_part_done(struct service *svc)
{
    if (--svc->stops_pending_ > 0)
        return;
    if (svc->outbox != NULL)
        outbox_close(svc->outbox, OUTBOX_FLUSH_MS, on_outbox_closed, svc);
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

static void on_stop_timeout(uv_timer_t *t)
{
    struct service *svc = t->data;

    log_warn("stop: still busy after %u ms; closing every connection",
             svc->cfg.shutdown_timeout_ms);
    if (svc->http_ != NULL)
        http_server_abort(svc->http_);
}

void service_stop(struct service *svc)
{
    if (svc->stopping_)
        return;
    svc->stopping_ = 1;
    log_info("stopping: finishing the requests in hand");
    svc->stops_pending_ = 1 + svc->nstop_hooks_ + 1; /* http, hooks, this function */
    uv_signal_stop(&svc->sigterm_);
    uv_signal_stop(&svc->sigint_);
    svc->stop_timer_.data = svc;
    uv_timer_start(&svc->stop_timer_, on_stop_timeout, svc->cfg.shutdown_timeout_ms, 0);
    if (svc->http_ != NULL)
        http_server_close(svc->http_, on_http_closed, svc);
    else
        stop_part_done(svc);
    for (unsigned i = 0; i < svc->nstop_hooks_; i++)
        svc->stop_hooks_[i].fn(svc, svc->stop_hooks_[i].data, stop_part_done);
    stop_part_done(svc);
}

static void on_signal(uv_signal_t *s, int signum)
{
    struct service *svc = s->data;

    log_info("received %s", signum == SIGTERM ? "SIGTERM" : "SIGINT");
    service_stop(svc);
}

/* ---------------------------------------------------------------------------
 * Running
 * ------------------------------------------------------------------------- */

static void on_stray_handle(uv_handle_t *h, void *arg)
{
    (void)arg;
    if (!uv_is_closing(h)) {
        log_warn("stop: closing a handle left open (type %s)", uv_handle_type_name(h->type));
        uv_close(h, NULL);
    }
}

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
    };
    int rc;

    rc = http_server_new(svc->loop, &hc, on_request, on_response, svc, &svc->http_);
    if (rc < 0) {
        log_error("http: cannot create the server: %s", strerror(-rc));
        return rc;
    }
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

static void service_release(struct service *svc)
{
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
}

int service_run(struct service *svc)
{
    int listen_rc, rc;

    uv_signal_init(svc->loop, &svc->sigterm_);
    uv_signal_init(svc->loop, &svc->sigint_);
    uv_timer_init(svc->loop, &svc->stop_timer_);
    svc->sigterm_.data = svc->sigint_.data = svc;
    uv_signal_start(&svc->sigterm_, on_signal, SIGTERM);
    uv_signal_start(&svc->sigint_, on_signal, SIGINT);

    redis_start(svc->redis);
    listen_rc = service_listen(svc);
    if (listen_rc < 0)
        service_stop(svc);
    uv_run(svc->loop, UV_RUN_DEFAULT);

    uv_walk(svc->loop, on_stray_handle, NULL);
    uv_run(svc->loop, UV_RUN_DEFAULT);
    service_release(svc);
    rc = uv_loop_close(svc->loop);
    if (rc < 0) {
        log_error("stop: the loop did not close: %s", uv_strerror(rc));
        return 1;
    }
    return listen_rc < 0 ? 1 : 0;
}
