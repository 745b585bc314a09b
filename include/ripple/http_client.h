/* http_client.h -- service-to-service HTTP on the service loop (libcurl).
 *
 * DESIGN.md §4. Requests run on one libcurl multi handle driven by the loop
 * through the multi-socket API (a uv_poll per socket, one uv_timer for
 * curl's timeouts), so the loop never blocks; curl keeps connections to a
 * host alive and reuses them, and resolves names off the loop.
 *
 * Each request gets a per-attempt timeout and an overall deadline. It is
 * retried (with jittered exponential backoff, within the deadline) only when
 * it is idempotent and the failure is a connect error, a timeout, or a 502,
 * 503 or 504 -- never for another status. Each target (a name such as
 * "users") has a circuit breaker: after breaker_failures consecutive
 * failures it opens and requests fail fast; after breaker_cooldown_ms one
 * probe is let through; its success closes the breaker, its failure opens it
 * again. GET answers can be cached per URL when the caller asks: 2xx for
 * cache_ttl_ms, 404 for cache_negative_ttl_ms; and when the target fails or
 * its breaker is open, a positive answer up to cache_stale_ms old is served
 * rather than an error. Bodies past max_response_bytes fail the request.
 *
 * Metrics: http_client_requests_total{target,result} and
 * circuit_state{target} (0 closed, 1 open, 2 half-open). Loop thread only. */
#ifndef RIPPLE_HTTP_CLIENT_H
#define RIPPLE_HTTP_CLIENT_H

#include <stddef.h>

#include <uv.h>

#include <ripple/common.h>

struct metrics;
struct http_client; /* opaque */

#define HTTP_CLIENT_MAX_TARGETS 16
#define HTTP_CLIENT_MAX_HEADERS 8

struct http_client_config {
    unsigned timeout_ms;          /* per attempt */
    unsigned attempts;            /* at most, for retryable failures */
    unsigned deadline_ms;         /* overall, retries included */
    unsigned backoff_ms;          /* base of the jittered exponential backoff */
    unsigned breaker_failures;    /* consecutive failures that open the breaker */
    unsigned breaker_cooldown_ms; /* open -> one probe after this */
    size_t max_response_bytes;
    size_t max_cache_entries;
    const char *log_scope; /* the module whose lines these are (log.h); borrowed, static */
};

struct http_client_request {
    const char *target; /* breaker and metrics name, e.g. "users"; copied */
    const char *method; /* "GET", "POST", ... */
    const char *url;    /* copied */
    const char *headers[HTTP_CLIENT_MAX_HEADERS]; /* "Name: value", NULL-terminated; copied */
    const char *body;                             /* copied; may be NULL */
    size_t body_len;
    int idempotent;                 /* retries allowed (GET, PUT, DELETE by nature) */
    unsigned cache_ttl_ms;          /* GET: cache 2xx answers this long (0: no cache) */
    unsigned cache_negative_ttl_ms; /* GET: cache 404 answers this long */
    unsigned cache_stale_ms;        /* GET: serve a 2xx this old when the target fails */
};

struct http_client_response {
    int status;            /* the HTTP status, or 0 when there was no answer */
    int error;             /* 0, or -ETIMEDOUT, -ECONNREFUSED (connect error), -EAGAIN
                            * (breaker open), -EMSGSIZE (body too large), -ECANCELED
                            * (client closing), -EIO (other) */
    const char *error_msg; /* "" when error == 0 */
    const char *body;      /* borrowed for the callback; NUL-terminated */
    size_t body_len;
    int from_cache;    /* 1 fresh from the cache, 2 stale (served because of a failure) */
    unsigned attempts; /* made */
};

/* Called exactly once per request, on the loop. */
typedef void (*http_client_cb)(const struct http_client_response *res, void *data);
typedef void (*http_client_closed_cb)(void *data);

/* Returns 0 and sets *out, or a negative errno. metrics may be NULL. */
CORE_MUST_CHECK int http_client_new(uv_loop_t *loop, const struct http_client_config *cfg,
                                    struct metrics *metrics, struct http_client **out);

/* Starts req (copied). Returns 0, after which cb fires exactly once (possibly
 * from the cache, but never before this function returns); or a negative
 * errno and cb never fires. */
CORE_MUST_CHECK int http_client_send(struct http_client *c, const struct http_client_request *req,
                                     http_client_cb cb, void *data);

/* The breaker of target: 0 closed, 1 open, 2 half-open (-1 unknown target). */
int http_client_circuit(const struct http_client *c, const char *target);

/* Fails every request in flight with -ECANCELED, closes the handles, frees
 * c, then calls done(data). */
void http_client_close(struct http_client *c, http_client_closed_cb done, void *data);

#endif
