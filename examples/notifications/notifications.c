/* notifications.c -- a ripple module built out of tree (docs/writing-a-service.md).
 *
 * Each order.confirmed, .cancelled and .rejected on orders.events becomes one
 * notification row (one per order and kind: an event delivered again notifies
 * once) and a notification.sent, in the consumer's transaction. GET
 * /api/v1/notifications?user_id=&limit=&after= lists them, newest first: a
 * user reads their own, a service token anyone's. Loop thread only. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <sqlite3.h>

#include <ripple/ripple.h>

extern const char notifications_schema_sql[]; /* schema.sql, by ripple-embed-sql */

struct notifications {
    struct service *svc;                  /* borrowed */
    struct sqlite3_stmt *insert, *recent; /* owned by the store */
};

static const char sql_insert[] = "INSERT INTO notifications (id, user_id, order_id, kind, message)"
                                 " VALUES (?, ?, ?, ?, ?)";
static const char sql_recent[] =
    "SELECT seq, json_object('id', id, 'user_id', user_id, 'order_id', order_id, 'kind', kind,"
    " 'message', message, 'created_at', created_at) FROM notifications"
    " WHERE (?1 IS NULL OR user_id = ?1) AND (?2 = 0 OR seq < ?2) ORDER BY seq DESC LIMIT ?3";

static const char *const kinds[] = {"confirmed", "cancelled", "rejected", NULL};
static const struct spec_field sent[] = {SPEC_UUID("notification_id"), SPEC_UUID("user_id"),
                                         SPEC_UUID("order_id"), SPEC_ENUM("kind", kinds), SPEC_END};
static const struct stream_type emits[] = {
    {"notifications.events", "notification.sent", sent, .summary = "a user was told"}, {NULL}};

static int on_order_ended(struct stream_msg *msg, void *data)
{
    struct notifications *n = data;
    const char *kind = msg->type + strlen("order."), *reason = stream_msg_str(msg, "reason");
    char id[IDS_UUID_LEN + 1], user[IDS_UUID_LEN + 1], order[IDS_UUID_LEN + 1], text[160];
    int rc;

    if (stream_msg_uuid(msg, "user_id", user) < 0 || stream_msg_uuid(msg, "order_id", order) < 0)
        return stream_msg_reject(msg, "data: user_id and order_id must be UUIDs");
    rc = reason ? snprintf(text, sizeof(text), "Your order %s was %s: %s.", order, kind, reason)
                : snprintf(text, sizeof(text), "Your order %s is confirmed: %lld cents paid.",
                           order, stream_msg_int(msg, "amount_cents", 0));
    if (rc < 0 || (size_t)rc >= sizeof(text))
        return -ENOSPC;
    ids_uuid7(id);
    rc = store_exec(n->svc->store, n->insert, "notifications: insert", "sssss", id, user, order,
                    kind, text);
    if (rc < 0) /* -EEXIST: this order's notification of this kind exists */
        return rc == -EEXIST ? 0 : rc;
    return outbox_emit(n->svc->outbox, &emits[0],
                       json_pack("{s:s, s:s, s:s, s:s}", "notification_id", id, "user_id", user,
                                 "order_id", order, "kind", kind),
                       stream_msg_trace(msg), NULL);
}

/* What orders emits, declared as it declares it. */
static const struct spec_field confirmed[] = {SPEC_UUID("order_id"), SPEC_UUID("user_id"),
                                              SPEC_POSITIVE("amount_cents", STREAMS_MAX_INTEGER),
                                              SPEC_END};
static const struct spec_field ended[] = {SPEC_UUID("order_id"), SPEC_UUID("user_id"),
                                          SPEC_WORD("reason"), SPEC_END};
static const struct stream_type consumes[] = {
    {"orders.events", "order.confirmed", confirmed, .handler = on_order_ended},
    {"orders.events", "order.cancelled", ended, .handler = on_order_ended},
    {"orders.events", "order.rejected", ended, .handler = on_order_ended},
    {NULL}};

/* Up to p->limit rows of user (NULL: everyone's) into items, newest first;
 * *next is the cursor of the page after, or 0. Returns 0 or -EIO. */
static int recent(struct notifications *n, const char *user, const struct http_page *p,
                  json_t *items, long long *next)
{
    sqlite3_stmt *q = n->recent;
    int rc = store_query(n->svc->store, q, "notifications: list", "sIi", user, (int64_t)p->after,
                         (int)p->limit + 1);

    for (*next = 0; rc == 1 && json_array_size(items) < p->limit;) {
        *next = sqlite3_column_int64(q, 0); /* the last row's seq */
        json_array_append_new(items, json_loads((const char *)sqlite3_column_text(q, 1), 0, NULL));
        if ((rc = sqlite3_step(q)) != SQLITE_ROW && rc != SQLITE_DONE)
            log_error("notifications: list: %s", store_errmsg(n->svc->store));
        rc = rc == SQLITE_ROW ? 1 : rc == SQLITE_DONE ? 0 : -EIO;
    }
    *next = rc == 1 ? *next : 0; /* 1: a row past the page, so a page after */
    store_reset(q);
    return rc < 0 ? rc : 0;
}

static void on_list(struct http_request *req, const struct auth_claims *who, void *data)
{
    char user[IDS_UUID_LEN + 1], own[IDS_UUID_LEN + 1];
    json_t *fields = json_object(), *items = json_array();
    struct http_page page;
    long long next;

    http_query_uuid(req, "user_id", user, fields);
    http_page_query(req, &page, fields);
    if (json_object_size(fields) > 0) /* the replies steal: a reference each */
        http_reply_invalid(req, json_incref(fields));
    else if (!who->is_service &&
             (auth_user_id(who, own) < 0 || (user[0] && strcmp(user, own) != 0)))
        http_reply_error(req, 403, NULL, "a user may read only their own notifications");
    else if (recent(data, who->is_service ? (user[0] ? user : NULL) : own, &page, items, &next))
        http_reply_internal(req);
    else
        http_reply_page(req, json_incref(items), next);
    json_decref(fields);
    json_decref(items);
}

static int notifications_start(struct service *svc)
{
    struct notifications *n;

    service_open_store(svc);
    if ((n = calloc(1, sizeof(*n))) == NULL)
        return -ENOMEM;
    n->svc = svc;
    if (store_prepare(svc->store, sql_insert, &n->insert) < 0 ||
        store_prepare(svc->store, sql_recent, &n->recent) < 0) {
        free(n);
        return -EIO;
    }
    service_route(svc, "GET", "/api/v1/notifications", 0, on_list, n);
    service_consume(svc, n, free); /* n lives until the last consumer has closed */
    return 0;
}

const struct module notifications_module = {
    .abi = MODULE_ABI,
    .name = "notifications",
    .default_port = 8005,
    .schema = notifications_schema_sql,
    .emits = emits,
    .consumes = consumes,
    .start = notifications_start,
};
