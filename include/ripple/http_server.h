/* http_server.h -- non-blocking HTTP/1.1 server on the service loop.
 *
 * One HTTP parser per connection; keep-alive; pipelined requests are
 * parsed one at a time and answered in order (the parser pauses at the end of
 * each message until its response is written). Limits from DESIGN.md §4:
 * request line + headers past max_header_bytes or max_headers -> 431, body
 * past max_body_bytes -> 413, malformed -> 400, connections past
 * max_connections -> 503; after any of these the connection is closed once
 * the answer is written. Timeouts (slowloris): a request's line and headers
 * must arrive within header_timeout_ms in all, counted from the request's
 * first byte (on a new connection, from the accept); its body within
 * body_timeout_ms in all, counted from the end of the headers, with no gap
 * between reads longer than header_timeout_ms. Past either, 408 and close.
 * A connection idle between requests for idle_timeout_ms is closed. While a
 * connection's unsent output exceeds HTTP_SERVER_WRITE_HIGH_WATER its reads
 * stop (back-pressure).
 *
 * A client that closes its side (EOF) while a handler holds its request has
 * gone away: the request reads as aborted and gets no answer (as nginx's
 * 499); half-closing HTTP/1.0 clients must wait for the answer first.
 *
 * Requests and responses: on_request fires once per request with a request
 * that stays valid until http_respond() is called for it -- in the callback
 * or later, after asynchronous work (a deferred response). If the client
 * goes away first, the request stays valid, http_request_aborted() turns
 * true, and http_respond() then only releases it: a deferred handler always
 * responds exactly once, and nothing it holds is freed under it.
 *
 * Loop thread only. Handles are freed in their close callbacks. */
#ifndef RIPPLE_HTTP_SERVER_H
#define RIPPLE_HTTP_SERVER_H

#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include <ripple/common.h>

#define HTTP_SERVER_MAX_PARAMS 4
#define HTTP_SERVER_PARAM_BYTES 256        /* all route params of one request, copied */
#define HTTP_SERVER_EXTRA_HEADER_BYTES 256 /* response headers added by handlers */
#define HTTP_SERVER_WRITE_HIGH_WATER ((size_t)256 * 1024)
#define HTTP_SERVER_READ_BYTES ((size_t)64 * 1024) /* one read */

struct http_server; /* opaque */
struct http_conn;   /* private */

struct http_header {
    const char *name; /* lower-cased, NUL-terminated; borrowed from the request */
    const char *value;
    size_t name_len, value_len;
};

struct http_param {
    const char *name;  /* borrowed from the route pattern */
    const char *value; /* NUL-terminated copy, lives as long as the request */
    size_t value_len;
};

struct http_request {
    /* public, read-only */
    const char *method; /* "GET", "POST", ... */
    const char *path;   /* NUL-terminated, without the query */
    size_t path_len;
    const char *query; /* after '?', NUL-terminated, "" when none */
    const struct http_header *headers;
    size_t nheaders;
    const char *body; /* NUL-terminated (the NUL is not counted) */
    size_t body_len;
    uint64_t start_ns; /* uv_hrtime() when the request was complete */

    /* public, set by the router */
    const char *route; /* matched pattern, for metrics; "unmatched" */
    struct http_param params[HTTP_SERVER_MAX_PARAMS];
    size_t nparams;

    /* public: for the handler's own use */
    void *data;
    /* public: its W3C trace context (ripple/trace.h), set by the service's
     * dispatcher from its traceparent header or anew; a handler that answers
     * later sets it again with trace_set before writing or emitting. */
    char traceparent[56];

    /* private */
    struct http_conn *conn_;
    char extra_headers_[HTTP_SERVER_EXTRA_HEADER_BYTES];
    size_t extra_len_;
    char param_buf_[HTTP_SERVER_PARAM_BYTES];
    size_t param_used_;
};

struct http_server_config {
    const char *host;
    unsigned port; /* 0 picks a free port; see http_server_port() */
    unsigned max_header_bytes, max_headers, max_body_bytes, max_connections;
    unsigned header_timeout_ms; /* ms: request line + headers, in all */
    unsigned body_timeout_ms;   /* ms: the body, in all */
    unsigned idle_timeout_ms;   /* ms: between requests */
    const char *log_scope;      /* the module whose lines these are (log.h); borrowed, static */
};

/* Fires once per complete request. */
typedef void (*http_request_cb)(struct http_request *req, void *data);
/* Fires once per response actually written (not for aborted requests), with
 * the status and the time from request complete to response queued. */
typedef void (*http_response_cb)(const struct http_request *req, int status, double seconds,
                                 void *data);
typedef void (*http_server_closed_cb)(void *data);

/* Copies cfg (host too). Returns 0 and sets *out, or a negative errno
 * (-EINVAL for a timeout, max_headers or max_connections of 0, or
 * max_header_bytes below 64); on error nothing is allocated and no callback
 * ever fires. on_response may be NULL. */
CORE_MUST_CHECK int http_server_new(uv_loop_t *loop, const struct http_server_config *cfg,
                                    http_request_cb on_request, http_response_cb on_response,
                                    void *data, struct http_server **out);
/* Binds and listens. Returns 0 or a libuv error (e.g. UV_EADDRINUSE). */
CORE_MUST_CHECK int http_server_listen(struct http_server *srv);
/* The bound port (useful with port 0). */
unsigned http_server_port(const struct http_server *srv);
/* Open connections. */
size_t http_server_connections(const struct http_server *srv);

/* Graceful close: stops accepting, closes idle connections at once and the
 * others once their response in hand is written, then frees srv and calls
 * closed_cb(data). http_server_abort() makes it stop waiting: every
 * connection is closed now (deferred requests stay valid until answered). */
void http_server_close(struct http_server *srv, http_server_closed_cb closed_cb, void *data);
void http_server_abort(struct http_server *srv);

/* Holding answers until what their handlers wrote is durable (the store's
 * group commit, store.h). Before each answer is sent, hold(data, release,
 * arg) is asked: 0 means queued -- the answer is kept (copied) and the
 * connection waits until release(arg, ok) -- and 1 means nothing is
 * pending: it goes out now. Released with ok, the answer is sent as it was
 * given; with !ok (the commit failed, nothing was saved) the client gets
 * 503 "unavailable" instead. An error from hold answers 503 too. */
typedef void (*http_release_cb)(void *arg, int ok);
typedef int (*http_hold_cb)(void *data, http_release_cb release, void *arg);
void http_server_hold_answers(struct http_server *srv, http_hold_cb hold, void *data);

/* Answers req with status, an optional content type (NULL: none) and body
 * (copied). Consumes req: it must not be used after this call. Returns 0;
 * -ECONNRESET when the client was already gone (the request is released
 * all the same). */
int http_respond(struct http_request *req, int status, const char *content_type, const char *body,
                 size_t len);
/* Adds a response header ("Retry-After", "5") before http_respond. Returns 0
 * or -ENOSPC past HTTP_SERVER_EXTRA_HEADER_BYTES. */
CORE_MUST_CHECK int http_add_header(struct http_request *req, const char *name, const char *value);

/* True once the client has disconnected (a deferred handler may stop early,
 * but must still call http_respond). */
int http_request_aborted(const struct http_request *req);
/* The value of header lname (lower case), borrowed, or NULL. */
const char *http_request_header(const struct http_request *req, const char *lname, size_t *len);
/* The value of route param name, borrowed, or NULL. */
const char *http_request_param(const struct http_request *req, const char *name);
/* Copies query parameter name (not percent-decoded) into buf. Returns its
 * length, -ENOENT when absent, or -ENOSPC when it does not fit. */
int http_request_query(const struct http_request *req, const char *name, char *buf, size_t len);

/* Records route param name = value[0..len) in req (copied; the router uses
 * it). Returns 0, or -ENOSPC past HTTP_SERVER_MAX_PARAMS or
 * HTTP_SERVER_PARAM_BYTES. */
CORE_MUST_CHECK int http_request_add_param(struct http_request *req, const char *name,
                                           const char *value, size_t len);

/* The reason phrase of status ("Not Found"), "Unknown" for others. */
const char *http_status_reason(int status);

#endif
