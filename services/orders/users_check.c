/* users_check.c -- does a user exist? Asked of the users service over HTTP.
 *
 * GET {USERS_URL}/api/v1/users/{id} with a service token, through the
 * service's http_client (target "users": per-attempt timeout, deadline,
 * retries, circuit breaker). Answers are cached per URL: a 200 for a minute,
 * a 404 for 5 s (a user registered just now is seen soon), and while users
 * fails a 200 up to 10 minutes old still stands: users do not disappear.
 *
 * 200 means the user exists, and a 404 whose error code is user_not_found
 * that it does not. Anything else means users cannot tell us now: a
 * transport error, a 5xx, an open breaker without a cached answer, a
 * 401/403 (the two services do not share JWT_SECRET), or a 404 without that
 * code: the route itself is missing, so USERS_URL names something other
 * than users -- taken as "no such user", it would reject every order. The
 * last two are logged as errors, since no retry will fix them.
 *
 * Owns one struct check per request, freed after its callback; o->checks
 * counts them so the module's stop waits for the last one (the client
 * cancels them all when the service stops). */
#include "orders.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include <ripple/auth.h>
#include <ripple/http_client.h>
#include <ripple/log.h>
#include <ripple/service.h>

#define CHECK_TARGET "users"
#define CHECK_TTL_MS 60000
#define CHECK_NEGATIVE_TTL_MS 5000
#define CHECK_STALE_MS 600000
#define CHECK_WHY_MAX 160

struct check {
    struct orders *o; /* borrowed: lives until o->checks drops to 0 */
    orders_user_cb cb;
    void *data;
};

/* 1 when a 404's body is users' {"error":{"code":"user_not_found",...}}. */
static int says_no_such_user(const struct http_client_response *res)
{
    json_t *body = json_loadb(res->body, res->body_len, 0, NULL);
    const char *code = json_string_value(json_object_get(json_object_get(body, "error"), "code"));
    int yes = code != NULL && strcmp(code, "user_not_found") == 0;

    json_decref(body);
    return yes;
}

/* What the answer means; why says what went wrong when it is not usable. */
static enum orders_user classify(const struct orders *o, const struct http_client_response *res,
                                 char *why, size_t len)
{
    if (res->error == 0 && res->status == 200)
        return ORDERS_USER_EXISTS;
    if (res->error == 0 && res->status == 404) {
        if (says_no_such_user(res))
            return ORDERS_USER_UNKNOWN;
        log_error("%s answered 404 without \"user_not_found\" to a user check: is USERS_URL "
                  "the users service?",
                  o->users_url);
        snprintf(why, len, "it has no such route (404): is USERS_URL the users service?");
        return ORDERS_USER_UNAVAILABLE;
    }
    if (res->error == -ECANCELED) {
        snprintf(why, len, "the service is stopping");
    } else if (res->error < 0 || res->status == 0) {
        snprintf(why, len, "%s", res->error_msg[0] ? res->error_msg : strerror(-res->error));
    } else if (res->status == 401 || res->status == 403) {
        log_error("users answered %d to our service token: do orders and users share "
                  "JWT_SECRET?",
                  res->status);
        snprintf(why, len, "it refused our service token (%d)", res->status);
    } else {
        snprintf(why, len, "it answered %d", res->status);
    }
    return ORDERS_USER_UNAVAILABLE;
}

static void on_answer(const struct http_client_response *res, void *data)
{
    struct check *k = data;
    struct orders *o = k->o;
    char why[CHECK_WHY_MAX] = "";
    enum orders_user answer = classify(o, res, why, sizeof(why));

    if (answer == ORDERS_USER_UNAVAILABLE)
        log_debug("user check: users is unavailable: %s", why);
    k->cb(o, answer, why, k->data);
    free(k);
    o->checks--;
    orders_maybe_stopped(o);
}

/* Builds the URL and the Authorization header. Returns 0, -ENAMETOOLONG or
 * -ENOMEM (no token). */
static int build_request(struct orders *o, const char *user_id, char *url, size_t url_len,
                         char *authz, size_t authz_len)
{
    const char *token = service_token(o->svc);
    int n;

    if (token == NULL)
        return -ENOMEM;
    n = snprintf(url, url_len, "%s/api/v1/users/%s", o->users_url, user_id);
    if (n < 0 || (size_t)n >= url_len)
        return -ENAMETOOLONG;
    n = snprintf(authz, authz_len, "Authorization: Bearer %s", token);
    if (n < 0 || (size_t)n >= authz_len)
        return -ENAMETOOLONG;
    return 0;
}

int orders_user_check(struct orders *o, const char *user_id, orders_user_cb cb, void *data)
{
    char url[ORDERS_URL_MAX + 64], authz[AUTH_MAX_TOKEN + 32];
    struct http_client_request r = {
        .target = CHECK_TARGET,
        .method = "GET",
        .url = url,
        .headers = {authz, "Accept: application/json", NULL},
        .idempotent = 1,
        .cache_ttl_ms = CHECK_TTL_MS,
        .cache_negative_ttl_ms = CHECK_NEGATIVE_TTL_MS,
        .cache_stale_ms = CHECK_STALE_MS,
    };
    struct check *k;
    int rc;

    /* The client is closed by its own stop hook and NULL afterwards. */
    if (o->stopping || o->svc->http_client == NULL)
        return -ECANCELED;
    rc = build_request(o, user_id, url, sizeof(url), authz, sizeof(authz));
    if (rc < 0)
        return rc;
    k = malloc(sizeof(*k));
    if (k == NULL)
        return -ENOMEM;
    k->o = o;
    k->cb = cb;
    k->data = data;
    rc = http_client_send(o->svc->http_client, &r, on_answer, k);
    if (rc < 0) {
        free(k);
        return rc;
    }
    o->checks++;
    return 0;
}
