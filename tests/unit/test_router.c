/* test_router.c -- http_router: patterns, params, 404 vs 405, Allow. */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include <ripple/http_router.h>
#include <ripple/http_server.h>

static void h1(struct http_request *req, const struct auth_claims *who, void *data)
{
    (void)req, (void)who, (void)data;
}

static void h2(struct http_request *req, const struct auth_claims *who, void *data)
{
    (void)req, (void)who, (void)data;
}

static struct http_router *r;

static void setup(void)
{
    cr_assert_eq(http_router_new(&r), 0);
    cr_assert_eq(http_router_add(r, "POST", "/api/v1/users", HTTP_ROUTE_PUBLIC, h1, NULL), 0);
    cr_assert_eq(http_router_add(r, "GET", "/api/v1/users/{id}", 0, h2, NULL), 0);
    cr_assert_eq(http_router_add(r, "GET", "/a/{x}/b/{y}", 0, h1, NULL), 0);
    cr_assert_eq(http_router_add(r, "GET", "/healthz", HTTP_ROUTE_PUBLIC, h1, NULL), 0);
}

static void teardown(void)
{
    http_router_free(r);
}

static int match(const char *method, const char *path, struct http_route_match *m)
{
    return http_router_match(r, method, path, strlen(path), m);
}

TestSuite(router, .init = setup, .fini = teardown);

Test(router, literal_route)
{
    struct http_route_match m;

    cr_assert_eq(match("POST", "/api/v1/users", &m), 0);
    cr_assert_eq(m.route->handler, h1);
    cr_assert_eq(m.route->flags, HTTP_ROUTE_PUBLIC);
    cr_assert_eq(m.nparams, 0);
    cr_assert_str_eq(m.route->pattern, "/api/v1/users");
}

Test(router, param_route)
{
    struct http_route_match m;

    cr_assert_eq(match("GET", "/api/v1/users/abc-123", &m), 0);
    cr_assert_eq(m.route->handler, h2);
    cr_assert_eq(m.nparams, 1);
    cr_assert_str_eq(m.params[0].name, "id");
    cr_assert_eq(m.params[0].len, 7);
    cr_assert_eq(memcmp(m.params[0].value, "abc-123", 7), 0);
    cr_assert_str_eq(m.route->pattern, "/api/v1/users/{id}");
}

Test(router, two_params)
{
    struct http_route_match m;

    cr_assert_eq(match("GET", "/a/1/b/22", &m), 0);
    cr_assert_eq(m.nparams, 2);
    cr_assert_str_eq(m.params[0].name, "x");
    cr_assert_str_eq(m.params[1].name, "y");
    cr_assert_eq(m.params[1].len, 2);
}

Test(router, not_found)
{
    struct http_route_match m;

    cr_assert_eq(match("GET", "/nope", &m), -ENOENT);
    cr_assert_eq(match("GET", "/api/v1/users/", &m), -ENOENT, "an empty param is no match");
    cr_assert_eq(match("GET", "/api/v1/users/x/y", &m), -ENOENT, "extra segment");
    cr_assert_eq(match("GET", "/api/v1", &m), -ENOENT, "prefix only");
    cr_assert_eq(match("GET", "/healthz/", &m), -ENOENT, "trailing slash");
    cr_assert_eq(match("GET", "", &m), -ENOENT);
    cr_assert_eq(match("GET", "healthz", &m), -ENOENT);
    cr_assert_eq(match("GET", "//healthz", &m), -ENOENT);
}

Test(router, method_not_allowed)
{
    struct http_route_match m;
    char allow[64];

    cr_assert_eq(match("DELETE", "/api/v1/users", &m), -EPERM);
    cr_assert_eq(match("GET", "/api/v1/users", &m), -EPERM);
    cr_assert_eq(match("POST", "/api/v1/users/1", &m), -EPERM);
    cr_assert_eq(http_router_allow(r, "/api/v1/users", 13, allow, sizeof(allow)), 4);
    cr_assert_str_eq(allow, "POST");
    cr_assert_eq(http_router_allow(r, "/api/v1/users", 13, allow, 3), -ENOSPC);
}

Test(router, bad_patterns)
{
    cr_assert_eq(http_router_add(r, "GET", "no-slash", 0, h1, NULL), -EINVAL);
    cr_assert_eq(http_router_add(r, "GET", "/a//b", 0, h1, NULL), -EINVAL);
    cr_assert_eq(http_router_add(r, "GET", "/a/", 0, h1, NULL), -EINVAL);
    cr_assert_eq(http_router_add(r, "GET", "/a/{x", 0, h1, NULL), -EINVAL);
    cr_assert_eq(http_router_add(r, "GET", "/a/{}", 0, h1, NULL), -EINVAL);
    cr_assert_eq(http_router_add(r, "GET", "/a/x{y}", 0, h1, NULL), -EINVAL);
}

Test(router, limit_on_routes)
{
    struct http_router *big;
    char pat[32];
    int rc = 0;

    cr_assert_eq(http_router_new(&big), 0);
    for (int i = 0; i <= HTTP_ROUTER_MAX_ROUTES && rc == 0; i++) {
        snprintf(pat, sizeof(pat), "/r%d", i);
        rc = http_router_add(big, "GET", pat, 0, h1, NULL);
    }
    cr_assert_eq(rc, -ENOSPC);
    http_router_free(big);
}

Test(router, first_match_wins)
{
    struct http_route_match m;

    cr_assert_eq(http_router_add(r, "GET", "/api/v1/users/me", 0, h1, NULL), 0);
    cr_assert_eq(match("GET", "/api/v1/users/me", &m), 0);
    cr_assert_eq(m.route->handler, h2, "the {id} route was added first");
}

/* "/" matches a route with no segments, and says it has no params (the
 * count was once left as it was: garbage for a fresh match struct). */
Test(router, root_route_has_no_params)
{
    struct http_route_match m;

    cr_assert_eq(http_router_add(r, "GET", "/", HTTP_ROUTE_PUBLIC, h2, NULL), 0);
    memset(&m, 0xa5, sizeof(m));
    cr_assert_eq(match("GET", "/", &m), 0);
    cr_assert_eq(m.route->handler, h2);
    cr_assert_eq(m.nparams, 0);
}

/* A request holds HTTP_SERVER_MAX_PARAMS params: a route with more would
 * register and then answer 404 to everything, so it does not register. */
Test(router, more_params_than_a_request_holds)
{
    cr_assert_eq(HTTP_SERVER_MAX_PARAMS, 4);
    cr_assert_eq(http_router_add(r, "GET", "/p/{a}/{b}/{c}/{d}", 0, h1, NULL), 0);
    cr_assert_eq(http_router_add(r, "GET", "/q/{a}/{b}/{c}/{d}/{e}", 0, h1, NULL), -ENOSPC);
}
