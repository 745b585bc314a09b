/* service.h -- one service process: config, loop, database, HTTP, stop.
 *
 * A service is one process with one libuv loop. service_init reads the
 * configuration (stopping the process with one line naming a bad value),
 * sets up logging, metrics, auth and the router; the service module adds
 * its routes and opens its store; service_run listens, serves /healthz,
 * /readyz and /metrics besides the routes, and runs the loop until SIGTERM or
 * SIGINT. Then it stops gracefully: stop accepting, finish the requests in
 * hand (up to SHUTDOWN_TIMEOUT_MS), close every handle, close the store, and
 * return 0 once uv_loop_close() succeeds.
 *
 * The dispatcher in front of every route verifies the bearer token unless
 * the route is HTTP_ROUTE_PUBLIC (401 JSON on any failure), answers 404/405
 * in the JSON shape, and counts http_requests_total{route,code} and
 * http_request_duration_seconds. Only this module may exit(1), and only at
 * startup. */
#ifndef CORE_SERVICE_H
#define CORE_SERVICE_H

#include <uv.h>

#include "auth.h"
#include "common.h"
#include "config.h"
#include "http_router.h"

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

struct service {
    /* public */
    uv_loop_t *loop;                 /* the process's loop */
    struct config cfg;               /* read at init */
    struct auth auth;                /* JWT_SECRET */
    struct metrics *metrics;         /* the registry /metrics renders */
    struct store *store;             /* NULL until service_open_store */
    struct outbox *outbox;           /* opened with the store */
    struct redis *redis;             /* the command connection (REDIS_URL) */
    struct http_client *http_client; /* NULL until service_http_client */
    struct http_router *router;

    /* private */
    struct http_server *http_;
    struct service_stats *stats_;
    uv_signal_t sigterm_, sigint_;
    uv_timer_t stop_timer_;
    uint64_t stop_deadline_; /* uv_now ms: SHUTDOWN_TIMEOUT_MS after the stop began */
    int stopping_;
    unsigned closing_handles_;
    unsigned stops_pending_;
    struct {
        service_stop_cb fn;
        void *data;
    } stop_hooks_[SERVICE_MAX_STOP_HOOKS];
    unsigned nstop_hooks_;
    char *token_; /* service_token's, new */
    service_stop_done_cb client_done_;
    long token_exp_; /* s since the epoch */
};

/* Reads the configuration of service name (default port default_port) and
 * sets everything up. On a bad setting, prints one line naming it and exits
 * with status 1. */
void service_init(struct service *svc, const char *name, unsigned default_port);

/* Opens cfg.db_path, migrates it with schema (borrowed) and opens the
 * outbox on it. Exits with one line on failure. */
void service_open_store(struct service *svc, const char *schema);

/* Adds a route under the service's dispatcher. A bad pattern is a
 * programming error: one line and exit(1). */
void service_route(struct service *svc, const char *method, const char *pattern, unsigned flags,
                   http_handler_cb handler, void *data);

/* Registers a stop hook (see service_stop_cb). Exits on overflow. */
void service_on_stop(struct service *svc, service_stop_cb fn, void *data);

/* Listens and runs the loop until stopped. Returns the process exit status:
 * 0 after a graceful stop, 1 when it could not listen. */
int service_run(struct service *svc);

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

/* Starts the graceful stop, as a signal does. The order: stop accepting and
 * finish HTTP requests and stop hooks (consumers) together; then flush the
 * outbox; then close Redis; then the loop runs dry. SHUTDOWN_TIMEOUT_MS
 * bounds it all: at that deadline HTTP connections are closed and the Redis
 * connection is halted (replies still awaited arrive as NULL), so a hung
 * Redis cannot hold the stop; unpublished rows stay in the outbox. */
void service_stop(struct service *svc);

/* Exits with status 1 and one line "<service>: <message>" on stderr
 * (startup only). */
CORE_NORETURN void service_fatal(const struct service *svc, const char *fmt, ...) CORE_PRINTF(2, 3);

#endif
