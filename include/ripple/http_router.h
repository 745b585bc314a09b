/* http_router.h -- method + path pattern -> handler.
 *
 * Patterns are literal segments and `{name}` segments that match one
 * non-empty path segment ("/api/v1/users/{id}"). Matching is exact on
 * segments (no prefixes, a trailing slash is a different path). A path that
 * matches no pattern is -ENOENT (404); one that matches a pattern under other
 * methods only is -EPERM (405), and http_router_allow() lists them. Routes are
 * matched in the order they were added. http_router_dispatch() is the whole
 * request path above the server: match, verify the token, call the handler. */
#ifndef RIPPLE_HTTP_ROUTER_H
#define RIPPLE_HTTP_ROUTER_H

#include <stddef.h>

#include <ripple/common.h>

struct http_request;
struct openapi_route;
struct auth;
struct auth_claims;
struct http_router; /* opaque */

#define HTTP_ROUTER_MAX_ROUTES 64
#define HTTP_ROUTER_MAX_SEGMENTS 16

/* Flags of a route. */
#define HTTP_ROUTE_PUBLIC 0x1 /* no token needed (DESIGN.md §4 public routes) */

/* A handler answers req with http_respond (now or later). who is the
 * verified token's claims, borrowed for the call only (copy what a deferred
 * handler needs); NULL on public routes. */
typedef void (*http_handler_cb)(struct http_request *req, const struct auth_claims *who,
                                void *data);

struct http_route {
    const char *method;  /* borrowed literal */
    const char *pattern; /* copied */
    unsigned flags;
    http_handler_cb handler;
    void *data;
    const struct openapi_route *doc; /* borrowed (static); NULL: undocumented */
    /* private */
    char *segs_[HTTP_ROUTER_MAX_SEGMENTS];
    size_t nsegs_;
};

struct http_route_match {
    const struct http_route *route; /* borrowed from the router */
    struct {
        const char *name;  /* borrowed from the route */
        const char *value; /* borrowed from the path: not NUL-terminated */
        size_t len;
    } params[HTTP_ROUTER_MAX_SEGMENTS];
    size_t nparams;
};

CORE_MUST_CHECK int http_router_new(struct http_router **out);
void http_router_free(struct http_router *r);

/* Adds a route. method must be a string literal or outlive the router.
 * Returns 0, -EINVAL for a malformed pattern, -ENOSPC past the limits. */
CORE_MUST_CHECK int http_router_add(struct http_router *r, const char *method, const char *pattern,
                                    unsigned flags, http_handler_cb handler, void *data);

/* The same with the route's description for the OpenAPI document
 * (ripple/openapi.h); doc is borrowed and must outlive the router. */
CORE_MUST_CHECK int http_router_add_doc(struct http_router *r, const char *method,
                                        const char *pattern, unsigned flags,
                                        const struct openapi_route *doc, http_handler_cb handler,
                                        void *data);

/* The i-th route added (0-based), or NULL past the last: how the OpenAPI
 * document and the route listing walk the table. Borrowed. */
const struct http_route *http_router_route(const struct http_router *r, size_t i);

/* Returns 0 and fills *m, -ENOENT (no such path) or -EPERM (path known, method
 * not allowed). */
CORE_MUST_CHECK int http_router_match(const struct http_router *r, const char *method,
                                      const char *path, size_t path_len,
                                      struct http_route_match *m);

/* Writes the methods allowed for path, comma-separated ("GET, POST"), into
 * buf. Returns the length written, or -ENOSPC. */
int http_router_allow(const struct http_router *r, const char *path, size_t path_len, char *buf,
                      size_t len);

/* Answers req through r: 404 for an unknown path, 405 with Allow for a
 * method the path does not take, 401 with WWW-Authenticate: Bearer when a
 * route that is not public has no valid token under auth at time now (unix
 * seconds); otherwise sets req->route and the path params and calls the
 * route's handler with the verified claims (NULL on public routes). */
void http_router_dispatch(const struct http_router *r, const struct auth *auth, long now,
                          struct http_request *req);

/* For a route about one user's resource: 0 when who may see the resource
 * of user id (the user themself, or a service token); otherwise answers 401
 * (no claims: a gap the dispatcher should have closed) or 403 with
 * message, consuming req, and returns -EACCES. */
CORE_MUST_CHECK int http_route_owner_only(struct http_request *req, const struct auth_claims *who,
                                          const char *id, const char *message);

#endif
