/* events.c -- the orders service's stream side (DESIGN.md §5, §6, §8).
 *
 * Consumes orders.commands: order.place {user_id, items} (already checked
 * against the catalog's spec) places an order like POST /api/v1/orders.
 * Items must also pass the service's own rules (input.h, the same as over
 * HTTP; qty's bound is the catalog's STREAMS_MAX_QTY, so the catalog has
 * already held it), else the command is refused once, to the dead-letter
 * stream, with the reason. The
 * user check is asynchronous: the handler starts it and returns
 * STREAM_CONSUMER_ASYNC, and the consumer holds the stream (entries still
 * take effect in order) while the loop keeps serving. When users answers,
 * the handler is called again inside the consumer's transaction:
 *
 *   user exists      -> the order PENDING, as over HTTP (orders_create)
 *   unknown user     -> the order REJECTED (unknown_user), order.rejected;
 *                       recorded, acked, never retried
 *   users unavailable-> stream_consumer_done(-EAGAIN): the entry stays in
 *                       hand, retried with backoff, never dead-lettered
 *
 * The order's first timeline step, "requested", is the command itself (its
 * event id and entry id); the events the order sends carry the order id as
 * their trace. Because the consumer holds one asynchronous entry at a time,
 * the entry in check lives in o->place rather than in a per-entry
 * allocation: nothing leaks if the consumer never resumes the handler. */
#include "orders.h"

#include <errno.h>
#include <string.h>

#include <jansson.h>

#include "input.h"
#include <ripple/log.h>
#include <ripple/service.h>
#include <ripple/stream_consumer.h>
#include <ripple/streams.h>

static void place_clear(struct orders_pending_place *pp)
{
    json_decref(pp->items);
    pp->items = NULL;
    pp->done = NULL;
    pp->checking = 0;
}

static void on_user_checked(struct orders *o, enum orders_user answer, const char *why, void *data)
{
    struct orders_pending_place *pp = data;
    struct stream_done *done = pp->done;

    pp->checking = 0;
    pp->done = NULL;
    if (answer == ORDERS_USER_UNAVAILABLE) {
        log_warn("order.place for user %s waits: the users service is unavailable: %s", pp->user_id,
                 why);
        place_clear(pp);
        stream_consumer_done(done, -EAGAIN);
        return;
    }
    (void)o;
    pp->answer = answer;
    stream_consumer_done(done, 0);
}

/* The first call: checks the items, starts the user check. */
static int place_start(struct stream_msg *msg, struct orders *o)
{
    struct orders_pending_place *pp = &o->place;
    const json_t *user = json_object_get(msg->data, "user_id");
    json_t *fields = json_object(), *items = NULL;
    const char *key;
    int rc;

    if (o->stopping || pp->checking || fields == NULL) {
        json_decref(fields);
        return -EAGAIN;
    }
    rc = orders_input_items(json_object_get(msg->data, "items"), fields, &items);
    if (rc == -EINVAL && (key = json_object_iter_key(json_object_iter(fields))) != NULL)
        rc = stream_msg_reject(msg, "data.%s: %s", key,
                               json_string_value(json_object_get(fields, key)));
    json_decref(fields);
    if (rc != 0)
        return rc;
    place_clear(pp);
    if (ids_canonical(json_string_value(user), json_string_length(user), pp->user_id) < 0) {
        json_decref(items);
        return stream_msg_reject(msg, "data.user_id: must be a UUID"); /* the catalog's rule */
    }
    pp->items = items;
    rc = orders_user_check(o, pp->user_id, on_user_checked, pp);
    if (rc < 0)
        return rc == -ECANCELED ? -EAGAIN : rc;
    pp->checking = 1;
    pp->done = msg->done;
    msg->ctx = pp;
    return STREAM_CONSUMER_ASYNC;
}

/* Resumed inside the consumer's transaction, with the user's answer. */
static int place_finish(struct stream_msg *msg, struct orders *o)
{
    struct orders_pending_place *pp = &o->place;
    struct orders_new n = {
        .user_id = pp->user_id,
        .items = pp->items,
        .reason = pp->answer == ORDERS_USER_UNKNOWN ? ORDERS_REASON_UNKNOWN_USER : NULL,
        .cmd = msg,
    };
    char id[IDS_UUID_LEN + 1];
    int rc;

    if (msg->ctx != pp || pp->items == NULL)
        return -EAGAIN; /* not ours to resume: start over */
    rc = orders_create(o, &n, id, NULL);
    if (rc == 0)
        log_write(LOG_LEVEL_INFO, id, "order %s id=%s user=%s items=%zu from %s %s%s%s",
                  n.reason ? "rejected" : "placed", id, pp->user_id, json_array_size(pp->items),
                  msg->stream, msg->entry_id, msg->trace[0] ? " trace=" : "", msg->trace);
    place_clear(pp);
    return rc;
}

int orders_on_place(struct stream_msg *msg, void *data)
{
    struct orders *o = data;

    return msg->resumed ? place_finish(msg, o) : place_start(msg, o);
}

/* Every consumer of orders (orders.commands, inventory.events,
 * payments.events) shares one reference, dropped once all have closed. */
void orders_events_start(struct orders *o)
{
    service_consume(o->svc, o, orders_unref);
}
