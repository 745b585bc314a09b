/* input.h -- the orders service's input rules: items and ids.
 *
 * Shared by POST /api/v1/orders and the order.place handler, so that both
 * paths store the same shapes: items as a canonical [{sku, qty}] array (keys
 * in that order), ids as lower-case UUIDs. Problems are recorded in a 422
 * "fields" object under names like "items", "items[2].qty", "items[1].sku",
 * one message each. No state. */
#ifndef SERVICES_ORDERS_INPUT_H
#define SERVICES_ORDERS_INPUT_H

#include <stddef.h>

#include <ripple/common.h>
#include <ripple/ids.h>
#include <ripple/streams.h>

struct json_t;

#define ORDERS_MAX_ITEMS 100 /* per order */
#define ORDERS_MAX_SKU 64    /* bytes: ^[A-Za-z0-9._-]{1,64}$ */
#define ORDERS_MAX_KEY 64    /* bytes of an unknown key echoed back in a field name */

/* Checks items (borrowed, may be NULL when absent): a non-empty array of at
 * most ORDERS_MAX_ITEMS objects with exactly the keys sku (a string,
 * ^[A-Za-z0-9._-]{1,64}$) and qty (a JSON integer, 1..STREAMS_MAX_QTY: the one
 * quantity limit, shared with order.place and every other catalog qty), no
 * sku twice. Returns 0 and *canon (new: the items rebuilt as [{sku, qty}]);
 * -EINVAL after recording each problem in fields (borrowed object); or
 * -ENOMEM. */
CORE_MUST_CHECK int orders_input_items(const struct json_t *items, struct json_t *fields,
                                       struct json_t **canon);

/* Records "key": msg in fields (a key past ORDERS_MAX_KEY bytes is cut).
 * Returns -EINVAL, for callers counting problems. */
int orders_input_problem(struct json_t *fields, const char *key, const char *msg);

#endif
