/* service.h -- one hosted module: its settings, database, HTTP, stop.
 *
 * A struct service is a module (core/module.h) running inside a host
 * (core/host.h): the host owns the process and the loop, and each service
 * owns what its module has alone -- its configuration (read with the
 * module's prefix, DESIGN.md §11), its store and outbox, its Redis
 * connection, its listener on its own port with /healthz, /readyz and
 * /metrics besides the routes, its metrics registry, its HTTP client and its
 * service token. service_init reads the settings (stopping the process with
 * one line naming a bad value); the module's start adds routes and opens the
 * store; service_start listens and connects; service_stop stops gracefully:
 * stop accepting, finish the requests in hand (up to SHUTDOWN_TIMEOUT_MS),
 * let stop hooks finish (consumers), flush the outbox, close Redis, then
 * tell the host. service_release frees what is left once the loop is dry.
 *
 * The dispatcher in front of every route verifies the bearer token unless
 * the route is HTTP_ROUTE_PUBLIC (401 JSON on any failure), answers 404/405
 * in the JSON shape, and counts http_requests_total{route,code} and
 * http_request_duration_seconds. Only this module and the host may exit(1),
 * and only at startup. */
#ifndef RIPPLE_SERVICE_H
#define RIPPLE_SERVICE_H

#include <uv.h>

#include <ripple/auth.h>
#include <ripple/common.h>
#include <ripple/config.h>
#include <ripple/http_router.h>
#include <ripple/module.h>
#include <ripple/openapi.h>

struct metrics;
struct store;
struct redis;
struct outbox;
struct http_server;
struct http_request;
struct http_client;
struct service_stats; /* private: metric series of the dispatcher */

/* A hook a module registers to be told the service is stopping (stop
 * consuming, flush, close handles). done() must be called once the module
 * has finished; the loop is closed only after every hook is done. */
struct service;
typedef void (*service_stop_done_cb)(struct service *svc);
typedef void (*service_stop_cb)(struct service *svc, void *data, service_stop_done_cb done);

#define SERVICE_MAX_STOP_HOOKS 8

typedef void (*service_stopped_cb)(struct service *svc, void *data);

struct service {
    /* public */
    const struct module *module;     /* borrowed: static storage */
    uv_loop_t *loop;                 /* the host's loop, borrowed */
    struct config cfg;               /* read at init */
    struct auth auth;                /* JWT_SECRET */
    struct metrics *metrics;         /* the registry /metrics renders */
    struct store *store;             /* NULL until service_open_store */
    struct outbox *outbox;           /* opened with the store */
    struct redis *redis;             /* the command connection (REDIS_URL) */
    struct http_client *http_client; /* NULL until service_http_client */
    struct http_router *router;
    /* The host's services, this one included (borrowed, n_peers of them):
     * what a module may know of the modules hosted beside it -- their
     * names (peers[i].module->name) and where they listen (cfg.host,
     * cfg.port) -- never their internals. */
    const struct service *peers;
    size_t n_peers;

    /* private */
    struct http_server *http_;
    struct service_stats *stats_;
    uv_timer_t stop_timer_;
    uint64_t stop_deadline_; /* uv_now ms: SHUTDOWN_TIMEOUT_MS after the stop began */
    service_stopped_cb stopped_cb_;
    void *stopped_data_;
    int stopping_;
    unsigned stops_pending_;
    struct {
        service_stop_cb fn;
        void *data;
    } stop_hooks_[SERVICE_MAX_STOP_HOOKS];
    unsigned nstop_hooks_;
    char *token_; /* service_token's, new */
    service_stop_done_cb client_done_;
    long token_exp_; /* s since the epoch */
    /* GET /api/v1/openapi.json: what service_openapi said, and the
     * document built at service_start (new, served as is). */
    const char *api_description_;
    const struct openapi_schema *api_schemas_;
    char *openapi_;
    size_t openapi_len_;
};

/* Reads the settings of module m (with its prefix; shared = 1 in a host of
 * several modules) and sets up logging of its lines, metrics, auth, the
 * router and the Redis connection, on loop. On a bad setting, prints one
 * line naming the module and the variable and exits with status 1. */
void service_init(struct service *svc, uv_loop_t *loop, const struct module *m, int shared);

/* Opens cfg.db_path, migrates it with the module's schema and opens the
 * outbox on it. Exits with one line on failure (startup only). */
void service_open_store(struct service *svc);

/* A setting of the module: <NAME>_<var> when set, else <var>, else def;
 * checked against [min, max] (or min_len). Exits with one line naming the
 * module and the variable when it is bad (startup only). The string is
 * borrowed from the environment (or is def). */
unsigned long service_setting_uint(const struct service *svc, const char *var, unsigned long def,
                                   unsigned long min, unsigned long max);
const char *service_setting_str(const struct service *svc, const char *var, const char *def,
                                size_t min_len);

/* Adds a route under the service's dispatcher. A bad pattern is a
 * programming error: one line and exit(1). */
void service_route(struct service *svc, const char *method, const char *pattern, unsigned flags,
                   http_handler_cb handler, void *data);

/* service_route with what a client needs to know of the route (summary,
 * parameters, body and answer schemas: ripple/openapi.h), for the service's
 * OpenAPI document at GET /api/v1/openapi.json and its page at GET
 * /api/docs. doc is borrowed: static storage. A wrong fragment in it stops
 * the service at service_start with one line naming the route. */
void service_route_doc(struct service *svc, const char *method, const char *pattern, unsigned flags,
                       const struct openapi_route *doc, http_handler_cb handler, void *data);

/* What the OpenAPI document says of the module as a whole: a description
 * (CommonMark; NULL: a generic line) and the named schemas its routes'
 * fragments may $ref (a list ending with a NULL name; NULL for none). Both
 * borrowed: static storage. Call it from the module's start. */
void service_openapi(struct service *svc, const char *description,
                     const struct openapi_schema *schemas);

/* Registers a stop hook (see service_stop_cb). Exits on overflow. */
void service_on_stop(struct service *svc, service_stop_cb fn, void *data);

/* Builds the module's OpenAPI document from its routes (a bad route
 * description stops the process with one line naming it; at LOG_LEVEL=debug
 * every route is logged, "route GET /api/v1/users/{id}"), listens on the
 * module's port and starts connecting to Redis. Returns 0, or a negative
 * errno (logged) when it cannot listen. */
CORE_MUST_CHECK int service_start(struct service *svc);

/* The service's outbound HTTP client (HTTP_CLIENT_* settings), created on
 * first use and closed when the service stops. Exits on failure (call it
 * at startup). Borrowed. */
struct http_client *service_http_client(struct service *svc);

/* A service token (sub "service:<name>", role "service") for calls to
 * other services, re-signed when it has less than a minute left. Borrowed:
 * valid until the next call. NULL only on ENOMEM. */
const char *service_token(struct service *svc);

/* For HTTP write handlers: when the outbox backlog is past its threshold
 * (Redis unreachable for long), answers 503 with Retry-After, consuming req,
 * and returns 1; otherwise returns 0 and req is untouched. */
int service_shed_write(struct service *svc, struct http_request *req);

/* Starts the graceful stop. The order: stop accepting and finish HTTP
 * requests and stop hooks (consumers) together; then flush the outbox; then
 * close Redis. SHUTDOWN_TIMEOUT_MS bounds it all: at that deadline HTTP
 * connections are closed and the Redis connection is halted (replies still
 * awaited arrive as NULL), so a hung Redis cannot hold the stop; unpublished
 * rows stay in the outbox. When the last part is done, stopped(svc, data)
 * fires once (it may be NULL). A second call does nothing. */
void service_stop(struct service *svc, service_stopped_cb stopped, void *data);

/* Frees what the service still owns (store, router, metrics), once the
 * loop has run dry after the stop. */
void service_release(struct service *svc);

/* Exits with status 1 and one line "<module>: <message>" on stderr
 * (startup only). */
CORE_NORETURN void service_fatal(const struct service *svc, const char *fmt, ...) CORE_PRINTF(2, 3);

#endif
