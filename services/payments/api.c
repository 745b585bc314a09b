/* api.c -- the payments service's HTTP routes (DESIGN.md §4, §8).
 *
 * GET /api/v1/accounts/{user_id} answers {user_id, balance_cents,
 * updated_at} to the user themself or a service token; another user gets
 * 403 (as for users), an unknown account 404. An id that is not a UUID names
 * nothing: 404 for anyone, on both routes. GET /api/v1/payments/{order_id}
 * answers {order_id, user_id, amount_cents, status, reason, created_at} to
 * the payment's user or a service token; for anyone else the payment does
 * not exist (404, as for orders), so a user learns nothing about other
 * users' orders. Both need a token (the dispatcher verifies it) and answer
 * at once, from reads outside any transaction. Ids are matched in lower
 * case. Loop thread only. */
#include "payments.h"

#include <errno.h>
#include <string.h>

#include <jansson.h>

#include <ripple/auth.h>
#include <ripple/http_reply.h>
#include <ripple/http_router.h>
#include <ripple/http_server.h>
#include <ripple/log.h>
#include <ripple/service.h>

static void reply_internal(struct http_request *req)
{
    http_reply_error(req, 500, NULL, "internal error");
}

/* Answers body (stolen; NULL means ENOMEM) with 200. */
static void reply_ok_new(struct http_request *req, json_t *body)
{
    if (body == NULL) {
        log_error("payments: cannot encode an answer");
        reply_internal(req);
        return;
    }
    http_reply_json(req, 200, body);
}

/* The route param name as a lower-case UUID in id. Returns 1 when valid. */
static int param_id(struct http_request *req, const char *name, char id[IDS_UUID_LEN + 1])
{
    const char *s = http_request_param(req, name);

    return s != NULL && ids_canonical(s, strlen(s), id) == 0;
}

static void on_get_account(struct http_request *req, const struct auth_claims *who, void *data)
{
    struct payments *p = data;
    char id[IDS_UUID_LEN + 1];
    struct payments_account a;
    int rc;

    if (!param_id(req, "user_id", id)) { /* names no account: 404 for anyone, as everywhere */
        http_reply_error(req, 404, NULL, "no such account");
        return;
    }
    if (http_route_owner_only(req, who, id, "a user may read only their own account") < 0)
        return;
    rc = payments_account_get(p, id, &a);
    if (rc == -ENOENT) {
        http_reply_error(req, 404, NULL, "no such account");
        return;
    }
    if (rc < 0) {
        reply_internal(req);
        return;
    }
    reply_ok_new(req, json_pack("{s:s, s:I, s:s}", "user_id", id, "balance_cents",
                                (json_int_t)a.balance, "updated_at", a.updated_at));
}

static void on_get_payment(struct http_request *req, const struct auth_claims *who, void *data)
{
    struct payments *p = data;
    char id[IDS_UUID_LEN + 1];
    struct payments_payment pm;
    int rc = param_id(req, "order_id", id) ? payments_payment_get(p, id, &pm) : -ENOENT;

    if (who == NULL) {
        http_reply_error(req, 401, NULL, "a bearer token is required");
        return;
    }
    /* Someone else's payment is not found, exactly like a missing one. */
    if (rc == 0 && !who->is_service && !auth_is_subject(who, pm.user_id))
        rc = -ENOENT;
    if (rc == -ENOENT) {
        http_reply_error(req, 404, NULL, "no such payment");
        return;
    }
    if (rc < 0) {
        reply_internal(req);
        return;
    }
    reply_ok_new(req, json_pack("{s:s, s:s, s:I, s:s, s:s?, s:s}", "order_id", id, "user_id",
                                pm.user_id, "amount_cents", (json_int_t)pm.amount, "status",
                                payments_status_name(pm.status), "reason",
                                pm.reason[0] ? pm.reason : NULL, "created_at", pm.created_at));
}

/* The routes' description (ripple/openapi.h): GET /api/v1/openapi.json. */

static const struct openapi_schema payments_schemas[] = {
    {"Account", "{\"type\":\"object\",\"required\":[\"user_id\",\"balance_cents\",\"updated_at\"],"
                "\"additionalProperties\":false,\"properties\":{\"user_id\":" OPENAPI_UUID ","
                "\"balance_cents\":{\"type\":\"integer\"},\"updated_at\":" OPENAPI_TIME "}}"},
    {"Payment", "{\"type\":\"object\",\"required\":[\"order_id\",\"user_id\",\"amount_cents\","
                "\"status\",\"reason\",\"created_at\"],\"additionalProperties\":false,"
                "\"properties\":{\"order_id\":" OPENAPI_UUID ",\"user_id\":" OPENAPI_UUID ","
                "\"amount_cents\":{\"type\":\"integer\"},"
                "\"status\":{\"enum\":[\"succeeded\",\"failed\",\"refunded\"]},"
                "\"reason\":{\"type\":[\"string\",\"null\"],\"description\":\"Why it failed "
                "(no_account, insufficient_funds, ...); null otherwise.\"},"
                "\"created_at\":" OPENAPI_TIME "}}"},
    {NULL, NULL},
};

static const struct openapi_route doc_account = {
    .summary = "Read a user's account",
    .description = "The user themself or a service token.",
    .params =
        (const struct openapi_param[]){OPENAPI_PATH("user_id", "The user's id.", OPENAPI_UUID),
                                       OPENAPI_END_PARAMS},
    .responses =
        (const struct openapi_response[]){
            OPENAPI_ANSWER(200, "The account.", OPENAPI_REF("Account")),
            OPENAPI_ERROR(403, "Another user's account."),
            OPENAPI_ERROR(404, "No such account, or not a UUID."), OPENAPI_END},
};

static const struct openapi_route doc_payment = {
    .summary = "Read an order's payment",
    .description = "The payment's user or a service token; anyone else's is 404, like an "
                   "unknown one.",
    .params =
        (const struct openapi_param[]){OPENAPI_PATH("order_id", "The order's id.", OPENAPI_UUID),
                                       OPENAPI_END_PARAMS},
    .responses =
        (const struct openapi_response[]){
            OPENAPI_ANSWER(200, "The payment.", OPENAPI_REF("Payment")),
            OPENAPI_ERROR(404, "No such payment (or not the caller's, or not a UUID)."),
            OPENAPI_END},
};

void payments_api_start(struct payments *p)
{
    service_openapi(p->svc, "Accounts and the charges, refunds and credits of orders.",
                    payments_schemas);
    service_route_doc(p->svc, "GET", "/api/v1/accounts/{user_id}", 0, &doc_account, on_get_account,
                      p);
    service_route_doc(p->svc, "GET", "/api/v1/payments/{order_id}", 0, &doc_payment, on_get_payment,
                      p);
}
