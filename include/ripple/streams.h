/* streams.h -- the stream catalog of DESIGN.md §5: stream names, event types,
 * envelope fields, payload specs and their validation.
 *
 * Every stream name and event type is defined here once; no service writes
 * one as a literal. A stream entry (an "envelope") carries the fields type,
 * data, id, trace, source, ts and v; envelope_parse turns the raw fields of
 * one entry into a struct envelope and checks data against the catalog with
 * streams_validate. Dead letters go to "<stream>.dlq" (streams_dlq_name) with
 * the original fields plus error, group and deliveries.
 *
 * Commands vs events. On a *.commands stream every catalog type is handled,
 * and an entry of any other type is malformed. On a *.events stream a
 * consumer acks and skips the catalog types it does not act on (the consumer
 * decides which), and an entry of a non-catalog type is malformed. Both
 * cases look the same here: envelope_parse returns -ENOENT for a type the
 * catalog does not list for that stream, and the consumer dead-letters it.
 *
 * Payload rules (a field present must be valid; optional means it may be
 * absent, never null):
 *   ids           canonical UUID strings, 8-4-4-4-12 hex digits, any case
 *   amount_cents  integer cents, 1 .. STREAMS_MAX_INTEGER (a charge, credit,
 *                 order total or refund of nothing is a bug, not an event)
 *   price_cents   integer cents, 1 .. STREAMS_MAX_INTEGER (so every order
 *                 total, and the charge it leads to, is positive)
 *   balance_cents, available
 *                 integers, 0 .. STREAMS_MAX_INTEGER (levels, may be zero)
 *   qty           integer, 1 .. STREAMS_MAX_QTY
 *   reason        a snake_case word, ^[a-z][a-z0-9_]{0,63}$
 *   name          a string, non-empty and at most STREAMS_MAX_NAME bytes after
 *                 trimming ASCII white space, no control characters
 *   email         a string of at most STREAMS_MAX_EMAIL bytes after trimming,
 *                 exactly one '@' with text on both sides, no white space or
 *                 control characters (a light check: the users service keeps
 *                 its own, stricter rule)
 *   sku           ^[A-Za-z0-9._-]{1,64}$, compared byte for byte
 *   items         a non-empty array of at most STREAMS_MAX_ITEMS objects
 *                 {sku, qty}, no sku twice
 * JSON integers must be JSON integers: not strings, reals or booleans. An
 * unknown key, in data or inside an item, is rejected ("data.foo: unknown
 * field"), so that a producer's typo is caught at the first consumer.
 * Business rules (an unknown sku needs name and price_cents, an email already
 * taken) are the services' to check, not the catalog's.
 *
 * Error messages name the path and what is expected, e.g.
 * "data.items[2].qty: expected a positive integer". They are always
 * NUL-terminated printable ASCII (bytes from the entry outside 0x20-0x7e show
 * as '?'), cut to the caller's buffer, and safe to log or to store as a dead
 * letter's error. STREAMS_MAX_ERR bytes hold any of them whole (for the
 * catalog's stream names).
 *
 * No state, no threads; jansson is used for JSON. */
#ifndef STREAMS_STREAMS_H
#define STREAMS_STREAMS_H

#include <stddef.h>

#include <ripple/common.h>

struct json_t;

/* Streams: <service>.commands (what others ask a service to do) and
 * <service>.events (what happened in it). */
#define STREAM_USERS_COMMANDS "users.commands"
#define STREAM_USERS_EVENTS "users.events"
#define STREAM_ORDERS_COMMANDS "orders.commands"
#define STREAM_ORDERS_EVENTS "orders.events"
#define STREAM_INVENTORY_COMMANDS "inventory.commands"
#define STREAM_INVENTORY_EVENTS "inventory.events"
#define STREAM_PAYMENTS_COMMANDS "payments.commands"
#define STREAM_PAYMENTS_EVENTS "payments.events"

/* Types, grouped by stream; the data each carries is in the comment. */
/* users.commands */
#define EVENT_USER_REGISTER "user.register" /* name, email */
/* users.events */
#define EVENT_USER_REGISTERED "user.registered" /* user_id, name, email */
/* orders.commands */
#define EVENT_ORDER_PLACE "order.place" /* user_id, items */
/* orders.events */
#define EVENT_ORDER_PLACED "order.placed"       /* order_id, user_id, items */
#define EVENT_ORDER_CONFIRMED "order.confirmed" /* order_id, user_id, amount_cents */
#define EVENT_ORDER_REJECTED "order.rejected"   /* order_id, user_id, reason */
#define EVENT_ORDER_CANCELLED "order.cancelled" /* order_id, user_id, reason */
/* inventory.commands */
#define EVENT_STOCK_RESERVE "stock.reserve"     /* order_id, items */
#define EVENT_STOCK_RELEASE "stock.release"     /* order_id */
#define EVENT_STOCK_COMMIT "stock.commit"       /* order_id */
#define EVENT_PRODUCT_RESTOCK "product.restock" /* sku, qty, name?, price_cents? */
/* inventory.events */
#define EVENT_STOCK_RESERVED "stock.reserved"       /* order_id, amount_cents */
#define EVENT_STOCK_REJECTED "stock.rejected"       /* order_id, reason */
#define EVENT_STOCK_RELEASED "stock.released"       /* order_id */
#define EVENT_STOCK_COMMITTED "stock.committed"     /* order_id */
#define EVENT_PRODUCT_RESTOCKED "product.restocked" /* sku, qty, available */
/* payments.commands */
#define EVENT_PAYMENT_CHARGE "payment.charge" /* order_id, user_id, amount_cents */
#define EVENT_PAYMENT_REFUND "payment.refund" /* order_id */
#define EVENT_ACCOUNT_CREDIT "account.credit" /* user_id, amount_cents */
/* payments.events */
#define EVENT_ACCOUNT_OPENED "account.opened"       /* user_id, balance_cents */
#define EVENT_ACCOUNT_CREDITED "account.credited"   /* user_id, amount_cents, balance_cents */
#define EVENT_PAYMENT_SUCCEEDED "payment.succeeded" /* order_id, user_id, amount_cents */
#define EVENT_PAYMENT_REFUNDED "payment.refunded"   /* order_id, user_id, amount_cents */
#define EVENT_PAYMENT_FAILED "payment.failed"       /* order_id, user_id, reason */

/* Envelope fields of a stream entry. */
#define ENVELOPE_TYPE "type"     /* required, a type above */
#define ENVELOPE_DATA "data"     /* required, a JSON object: the payload */
#define ENVELOPE_ID "id"         /* event UUID, the de-duplication key */
#define ENVELOPE_TRACE "trace"   /* correlation id (the order id within a saga) */
#define ENVELOPE_SOURCE "source" /* emitting service */
#define ENVELOPE_TS "ts"         /* commit time, ms since the epoch */
#define ENVELOPE_V "v"           /* schema version, STREAMS_ENVELOPE_VERSION */

/* Dead letters: "<stream>.dlq", the original fields plus these. */
#define STREAMS_DLQ_SUFFIX ".dlq"
#define DLQ_ERROR "error"           /* why, one of this module's messages */
#define DLQ_GROUP "group"           /* the consumer group that gave up */
#define DLQ_DELIVERIES "deliveries" /* Redis' delivery count when dead-lettered */
#define DLQ_FAILURES "failures"     /* the handler failures recorded (MAX_DELIVERIES) */

/* Limits. Breaking one makes an entry malformed. */
#define STREAMS_ENVELOPE_VERSION 1
#define STREAMS_MAX_DATA_BYTES 65536 /* serialized data, bytes */
#define STREAMS_MAX_ID 128           /* event id, bytes incl. NUL */
#define STREAMS_MAX_TRACE 128        /* trace, bytes incl. NUL */
#define STREAMS_MAX_TYPE 64          /* type, bytes incl. NUL */
#define STREAMS_MAX_SOURCE 64        /* source, bytes incl. NUL */
#define STREAMS_MAX_ERR 256          /* an error buffer that holds any message */
#define STREAMS_MAX_NAME 100         /* bytes, after trimming */
#define STREAMS_MAX_EMAIL 254        /* bytes, after trimming (RFC 5321 path) */
#define STREAMS_MAX_SKU 64           /* bytes */
#define STREAMS_MAX_REASON 64        /* bytes */
#define STREAMS_MAX_ITEMS 100        /* entries of an items array */
/* THE quantity limit: units of one sku in an order's item (HTTP POST
 * /api/v1/orders and order.place alike), in stock.reserve and in a restock.
 * A plain decimal literal: orders quotes it in its 422 message. */
#define STREAMS_MAX_QTY 1000000
/* The largest amount or level: 2^53 - 1, exact in every JSON reader. */
#define STREAMS_MAX_INTEGER 9007199254740991LL

/* Returns 1 if stream's name ends in ".commands", else 0 (NULL too). */
int streams_is_commands(const char *stream);

/* Returns 1 if the catalog lists type for stream, else 0 (NULL too). Every
 * type belongs to exactly one stream. */
int streams_known_type(const char *stream, const char *type);

/* The catalog in table order, for metrics labels and tests: sets *stream and
 * *type (static strings) to entry i and returns 0, or returns -ENOENT when i
 * is past the last entry. */
CORE_MUST_CHECK int streams_catalog_entry(size_t i, const char **stream, const char **type);

/* Checks data (borrowed, may be NULL) against the spec of type on stream.
 * The type is checked first, so -ENOENT is returned whatever data is.
 * Returns 0; -ENOENT when the catalog does not list type for stream (err:
 * "type: unknown type \"x.y\" for stream users.commands"); or -EINVAL when
 * data is not an object or breaks its spec (err: "data: expected a JSON
 * object", "data.items[2].sku: required", "data.foo: unknown field", ...).
 * err (errlen bytes, may be NULL) is written only on error. On 0, every
 * field the spec lists is either absent (optional ones only) or valid. */
CORE_MUST_CHECK int streams_validate(const char *stream, const char *type,
                                     const struct json_t *data, char *err, size_t errlen);

/* One field of a raw stream entry: borrowed spans (e.g. into a hiredis
 * reply), not necessarily NUL-terminated. */
struct stream_field {
    const char *name;
    size_t name_len;
    const char *value;
    size_t value_len;
};

/* A parsed entry. The strings are NUL-terminated copies. */
struct envelope {
    char type[STREAMS_MAX_TYPE];
    struct json_t *data; /* new reference, owned by the envelope */
    char id[STREAMS_MAX_ID];
    char trace[STREAMS_MAX_TRACE];   /* "" if absent */
    char source[STREAMS_MAX_SOURCE]; /* "" if absent */
    long long ts;                    /* ms, 0 if absent */
    int v;                           /* 1 if absent */
};

/* Parses the fields of entry entry_id (e.g. "1700000000000-0") read from
 * stream. Requires type (non-empty, shorter than STREAMS_MAX_TYPE) and data
 * (a JSON object of at most STREAMS_MAX_DATA_BYTES bytes, duplicate keys
 * rejected). id is optional and defaults to "<stream>:<entry_id>"; a present
 * id is non-empty. id, trace and source must fit their buffers; no field may
 * hold a NUL byte. ts is optional, a non-negative decimal integer. v is
 * optional and must be STREAMS_ENVELOPE_VERSION ("v: unsupported version 2").
 * A field given twice is malformed; fields with other names are ignored (a
 * replayed dead letter's error, group, deliveries and failures). Then checks
 * data with streams_validate.
 *
 * Returns 0 with out filled (release it with envelope_release); -EINVAL when
 * the entry is malformed or its payload breaks its spec; or -ENOENT when the
 * catalog does not list its type for stream. err (errlen bytes, may be NULL)
 * says why, e.g. "type: required", "data: not JSON: ...", "data.qty: expected
 * a positive integer". On error out->data is NULL (out holds no references)
 * and the strings hold what was parsed before the error, for logging.
 * stream and entry_id are NUL-terminated; fields may be NULL if nfields is 0. */
CORE_MUST_CHECK int envelope_parse(const char *stream, const char *entry_id,
                                   const struct stream_field *fields, size_t nfields,
                                   struct envelope *out, char *err, size_t errlen);

/* Drops e's reference to data and sets it to NULL. Safe to call twice, and on
 * an envelope that envelope_parse failed to fill. */
void envelope_release(struct envelope *e);

/* Writes "<stream>.dlq" into buf (len bytes). Returns 0; -EINVAL for an empty
 * or NULL stream; or -ENAMETOOLONG if it does not fit (buf then holds ""). */
CORE_MUST_CHECK int streams_dlq_name(const char *stream, char *buf, size_t len);

#endif
