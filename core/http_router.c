/* http_router.c -- method + path pattern matching. See http_router.h.
 *
 * Routes are few (tens), so matching walks them in order and compares the
 * path segment by segment without copying it; a `{name}` segment matches any
 * one non-empty segment. */
#include <ripple/http_router.h>

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <ripple/auth.h>
#include <ripple/http_reply.h>
#include <ripple/http_server.h>
#include <ripple/log.h>

struct http_router {
    struct http_route routes[HTTP_ROUTER_MAX_ROUTES];
    size_t nroutes;
};

int http_router_new(struct http_router **out)
{
    struct http_router *r = calloc(1, sizeof(*r));

    if (r == NULL)
        return -ENOMEM;
    *out = r;
    return 0;
}

static void route_release(struct http_route *rt)
{
    for (size_t i = 0; i < rt->nsegs_; i++)
        free(rt->segs_[i]);
    free((char *)rt->pattern);
}

void http_router_free(struct http_router *r)
{
    if (r == NULL)
        return;
    for (size_t i = 0; i < r->nroutes; i++)
        route_release(&r->routes[i]);
    free(r);
}

/* A stored param segment is "{name" (the closing brace dropped at parse),
 * so seg + 1 is the NUL-terminated name. */
static int is_param(const char *seg)
{
    return seg[0] == '{';
}

static int check_segment(char *seg)
{
    size_t n = strlen(seg);

    if (strchr(seg, '{') == NULL && strchr(seg, '}') == NULL)
        return 0;
    if (n < 3 || seg[0] != '{' || seg[n - 1] != '}' || strchr(seg + 1, '{') ||
        memchr(seg, '}', n - 1))
        return -EINVAL;
    seg[n - 1] = '\0';
    return 0;
}

/* Splits pattern ("/a/{b}") into its segments. */
static int route_parse(struct http_route *rt, const char *pattern)
{
    const char *p = pattern + 1;
    size_t nparams = 0;

    if (pattern[0] != '/')
        return -EINVAL;
    while (*p) {
        const char *end = strchr(p, '/');
        size_t n = end ? (size_t)(end - p) : strlen(p);

        if (n == 0)
            return -EINVAL;
        if (rt->nsegs_ == HTTP_ROUTER_MAX_SEGMENTS)
            return -ENOSPC;
        rt->segs_[rt->nsegs_] = strndup(p, n);
        if (rt->segs_[rt->nsegs_] == NULL)
            return -ENOMEM;
        if (check_segment(rt->segs_[rt->nsegs_++]) < 0)
            return -EINVAL;
        /* a request holds this many: a route with more could never match */
        if (is_param(rt->segs_[rt->nsegs_ - 1]) && ++nparams > HTTP_SERVER_MAX_PARAMS)
            return -ENOSPC;
        p += n + (end ? 1 : 0);
        if (end && *p == '\0')
            return -EINVAL; /* trailing slash */
    }
    return 0;
}

int http_router_add(struct http_router *r, const char *method, const char *pattern, unsigned flags,
                    http_handler_cb handler, void *data)
{
    return http_router_add_doc(r, method, pattern, flags, NULL, handler, data);
}

const struct http_route *http_router_route(const struct http_router *r, size_t i)
{
    return i < r->nroutes ? &r->routes[i] : NULL;
}

int http_router_add_doc(struct http_router *r, const char *method, const char *pattern,
                        unsigned flags, const struct openapi_route *doc, http_handler_cb handler,
                        void *data)
{
    struct http_route *rt;
    int rc;

    if (r->nroutes == HTTP_ROUTER_MAX_ROUTES)
        return -ENOSPC;
    rt = &r->routes[r->nroutes];
    memset(rt, 0, sizeof(*rt));
    rt->method = method;
    rt->flags = flags;
    rt->handler = handler;
    rt->data = data;
    rt->doc = doc;
    rt->pattern = strdup(pattern);
    if (rt->pattern == NULL)
        return -ENOMEM;
    rc = route_parse(rt, pattern);
    if (rc < 0) {
        route_release(rt);
        memset(rt, 0, sizeof(*rt));
        return rc;
    }
    r->nroutes++;
    return 0;
}

/* Matches path against rt's segments, recording params in m (may be NULL). */
static int route_matches(const struct http_route *rt, const char *path, size_t len,
                         struct http_route_match *m)
{
    const char *p = path + 1, *end = path + len;
    size_t i = 0, np = 0;

    if (m != NULL)
        m->nparams = 0; /* "/" below returns before the count is stored */
    if (len == 0 || path[0] != '/')
        return 0;
    if (len == 1)
        return rt->nsegs_ == 0;
    for (; i < rt->nsegs_; i++) {
        const char *slash = memchr(p, '/', (size_t)(end - p));
        size_t n = slash ? (size_t)(slash - p) : (size_t)(end - p);
        const char *seg = rt->segs_[i];

        if (n == 0)
            return 0;
        if (is_param(seg)) {
            if (m) {
                m->params[np].name = seg + 1;
                m->params[np].value = p;
                m->params[np].len = n;
            }
            np++;
        } else if (strlen(seg) != n || memcmp(seg, p, n) != 0) {
            return 0;
        }
        p += n;
        if (p == end)
            break;
        p++; /* the slash */
        if (p == end)
            return 0; /* trailing slash */
    }
    if (i + 1 != rt->nsegs_ || p != end)
        return 0;
    if (m)
        m->nparams = np;
    return 1;
}

int http_router_match(const struct http_router *r, const char *method, const char *path,
                      size_t path_len, struct http_route_match *m)
{
    int path_known = 0;

    for (size_t i = 0; i < r->nroutes; i++) {
        const struct http_route *rt = &r->routes[i];

        if (strcmp(rt->method, method) != 0) {
            path_known = path_known || route_matches(rt, path, path_len, NULL);
            continue;
        }
        if (route_matches(rt, path, path_len, m)) {
            m->route = rt;
            return 0;
        }
    }
    return path_known ? -EPERM : -ENOENT;
}

int http_router_allow(const struct http_router *r, const char *path, size_t path_len, char *buf,
                      size_t len)
{
    size_t used = 0;

    if (len == 0)
        return -ENOSPC;
    buf[0] = '\0';
    for (size_t i = 0; i < r->nroutes; i++) {
        const struct http_route *rt = &r->routes[i];
        size_t n = strlen(rt->method);

        if (!route_matches(rt, path, path_len, NULL))
            continue;
        if (used + n + 3 > len)
            return -ENOSPC;
        if (used > 0) {
            memcpy(buf + used, ", ", 2);
            used += 2;
        }
        memcpy(buf + used, rt->method, n + 1);
        used += n;
    }
    return (int)used;
}

static void reply_unrouted(const struct http_router *r, struct http_request *req, int rc)
{
    char allow[128];

    if (rc == -EPERM) {
        if (http_router_allow(r, req->path, req->path_len, allow, sizeof(allow)) > 0 &&
            http_add_header(req, "Allow", allow) < 0)
            log_debug("http: Allow header did not fit");
        http_reply_error(req, 405, NULL, "method not allowed on this path");
        return;
    }
    http_reply_error(req, 404, NULL, "no such resource");
}

void http_router_dispatch(const struct http_router *r, const struct auth *auth, long now,
                          struct http_request *req)
{
    struct http_route_match m;
    struct auth_claims claims;
    const char *authz;
    size_t len = 0;
    int rc = http_router_match(r, req->method, req->path, req->path_len, &m);

    if (rc < 0) {
        reply_unrouted(r, req, rc);
        return;
    }
    req->route = m.route->pattern;
    for (size_t i = 0; i < m.nparams; i++) {
        if (http_request_add_param(req, m.params[i].name, m.params[i].value, m.params[i].len) < 0) {
            http_reply_error(req, 404, NULL, "no such resource");
            return;
        }
    }
    if (m.route->flags & HTTP_ROUTE_PUBLIC) {
        m.route->handler(req, NULL, m.route->data);
        return;
    }
    authz = http_request_header(req, "authorization", &len);
    if (auth_verify_header(auth, authz, len, now, &claims) < 0) {
        if (http_add_header(req, "WWW-Authenticate", "Bearer") < 0)
            log_debug("http: WWW-Authenticate did not fit");
        http_reply_error(req, 401, NULL,
                         authz ? "invalid or expired token" : "a bearer token is required");
        return;
    }
    m.route->handler(req, &claims, m.route->data);
}

int http_route_owner_only(struct http_request *req, const struct auth_claims *who, const char *id,
                          const char *message)
{
    if (who == NULL) {
        http_reply_error(req, 401, NULL, "a bearer token is required");
        return -EACCES;
    }
    if (!who->is_service && !auth_is_subject(who, id)) {
        http_reply_error(req, 403, NULL, message);
        return -EACCES;
    }
    return 0;
}
