/* catalog.c -- what orders puts on streams and takes from them (DESIGN.md
 * §12): the saga's commands to inventory and payments, its own events, and
 * the replies it waits for. Handlers live in events.c (order.place) and
 * saga.c (the replies). */
#include "orders.h"
#include "input.h"

#include <ripple/streams.h>

static const struct spec_field item_fields[] = {SPEC_TOKEN("sku", ORDERS_MAX_SKU),
                                                SPEC_POSITIVE("qty", STREAMS_MAX_QTY), SPEC_END};
static const struct spec_field item = SPEC_OBJECT(NULL, item_fields);
#define ITEMS SPEC_ARRAY("items", &item, 1, STREAMS_MAX_ITEMS, .unique = "sku")
#define AMOUNT SPEC_POSITIVE("amount_cents", STREAMS_MAX_INTEGER)

static const struct spec_field order_fields[] = {SPEC_UUID("order_id"), SPEC_END};
static const struct spec_field place_fields[] = {SPEC_UUID("user_id"), ITEMS, SPEC_END};
static const struct spec_field placed_fields[] = {SPEC_UUID("order_id"), SPEC_UUID("user_id"),
                                                  ITEMS, SPEC_END};
static const struct spec_field reserve_fields[] = {SPEC_UUID("order_id"), ITEMS, SPEC_END};
static const struct spec_field amount_fields[] = {SPEC_UUID("order_id"), SPEC_UUID("user_id"),
                                                  AMOUNT, SPEC_END};
static const struct spec_field reason_fields[] = {SPEC_UUID("order_id"), SPEC_UUID("user_id"),
                                                  SPEC_WORD("reason"), SPEC_END};
static const struct spec_field reserved_fields[] = {SPEC_UUID("order_id"), AMOUNT, SPEC_END};
static const struct spec_field rejected_fields[] = {SPEC_UUID("order_id"), SPEC_WORD("reason"),
                                                    SPEC_END};

const struct stream_type orders_emits[] = {
    [ORDERS_OUT_PLACED] = {"orders.events", "order.placed", placed_fields,
                           .summary = "an order was accepted (PENDING)"},
    [ORDERS_OUT_CONFIRMED] = {"orders.events", "order.confirmed", amount_fields,
                              .summary = "paid and sold"},
    [ORDERS_OUT_REJECTED] = {"orders.events", "order.rejected", reason_fields,
                             .summary = "refused: unknown_user, out_of_stock, ..."},
    [ORDERS_OUT_CANCELLED] = {"orders.events", "order.cancelled", reason_fields,
                              .summary = "given up and compensated: insufficient_funds, timeout"},
    [ORDERS_OUT_RESERVE] = {"inventory.commands", "stock.reserve", reserve_fields},
    [ORDERS_OUT_RELEASE] = {"inventory.commands", "stock.release", order_fields},
    [ORDERS_OUT_COMMIT] = {"inventory.commands", "stock.commit", order_fields},
    [ORDERS_OUT_CHARGE] = {"payments.commands", "payment.charge", amount_fields},
    [ORDERS_OUT_REFUND] = {"payments.commands", "payment.refund", order_fields},
    {NULL},
};

const struct stream_type orders_consumes[] = {
    {"orders.commands", "order.place", place_fields, orders_on_place,
     "place an order for a user (an unknown user ends it REJECTED)"},
    {"inventory.events", "stock.reserved", reserved_fields, .handler = orders_on_stock_reserved},
    {"inventory.events", "stock.rejected", rejected_fields, .handler = orders_on_stock_rejected},
    {"inventory.events", "stock.released", order_fields, .handler = orders_on_stock_released},
    {"inventory.events", "stock.committed", order_fields, .handler = orders_on_stock_committed},
    {"payments.events", "payment.succeeded", amount_fields, .handler = orders_on_payment_succeeded},
    {"payments.events", "payment.failed", reason_fields, .handler = orders_on_payment_failed},
    {"payments.events", "payment.refunded", amount_fields, .handler = orders_on_payment_refunded},
    {NULL},
};
