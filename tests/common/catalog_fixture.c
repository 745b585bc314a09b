/* catalog_fixture.c -- see catalog_fixture.h. */
#include "catalog_fixture.h"

#include <errno.h>
#include <string.h>

#define NAME SPEC_TEXT("name", STREAMS_MAX_NAME)
#define EMAIL SPEC_EMAIL("email")
#define SKU SPEC_TOKEN("sku", STREAMS_MAX_SKU)
#define QTY SPEC_POSITIVE("qty", STREAMS_MAX_QTY)
#define CENTS(n) SPEC_POSITIVE(n, STREAMS_MAX_INTEGER)
#define LEVEL(n) SPEC_INT(n, 0, STREAMS_MAX_INTEGER)
#define ITEMS SPEC_ARRAY("items", &item, 1, STREAMS_MAX_ITEMS, .unique = "sku")

static const struct spec_field item_fields[] = {SKU, QTY, SPEC_END};
static const struct spec_field item = SPEC_OBJECT(NULL, item_fields);

static const struct spec_field register_f[] = {NAME, EMAIL, SPEC_END};
static const struct spec_field registered_f[] = {SPEC_UUID("user_id"), NAME, EMAIL, SPEC_END};
static const struct spec_field place_f[] = {SPEC_UUID("user_id"), ITEMS, SPEC_END};
static const struct spec_field placed_f[] = {SPEC_UUID("order_id"), SPEC_UUID("user_id"), ITEMS,
                                             SPEC_END};
static const struct spec_field amount_f[] = {SPEC_UUID("order_id"), SPEC_UUID("user_id"),
                                             CENTS("amount_cents"), SPEC_END};
static const struct spec_field reason_f[] = {SPEC_UUID("order_id"), SPEC_UUID("user_id"),
                                             SPEC_WORD("reason"), SPEC_END};
static const struct spec_field reserve_f[] = {SPEC_UUID("order_id"), ITEMS, SPEC_END};
static const struct spec_field order_f[] = {SPEC_UUID("order_id"), SPEC_END};
static const struct spec_field restock_f[] = {SKU, QTY, SPEC_TEXT("name", STREAMS_MAX_NAME,
                                                                  .optional = 1),
                                              SPEC_POSITIVE("price_cents", STREAMS_MAX_INTEGER,
                                                            .optional = 1),
                                              SPEC_END};
static const struct spec_field reserved_f[] = {SPEC_UUID("order_id"), CENTS("amount_cents"),
                                               SPEC_END};
static const struct spec_field rejected_f[] = {SPEC_UUID("order_id"), SPEC_WORD("reason"),
                                               SPEC_END};
static const struct spec_field restocked_f[] = {SKU, QTY, LEVEL("available"), SPEC_END};
static const struct spec_field credit_f[] = {SPEC_UUID("user_id"), CENTS("amount_cents"),
                                             SPEC_END};
static const struct spec_field opened_f[] = {SPEC_UUID("user_id"), LEVEL("balance_cents"),
                                             SPEC_END};
static const struct spec_field credited_f[] = {SPEC_UUID("user_id"), CENTS("amount_cents"),
                                               LEVEL("balance_cents"), SPEC_END};
static const struct spec_field failed_f[] = {SPEC_UUID("order_id"), SPEC_UUID("user_id"),
                                             SPEC_WORD("reason"), SPEC_END};

#define T(s, t, f) {.stream = (s), .type = (t), .fields = (f)}

const struct stream_type catalog_fixture[] = {
    T(STREAM_USERS_COMMANDS, EVENT_USER_REGISTER, register_f),
    T(STREAM_USERS_EVENTS, EVENT_USER_REGISTERED, registered_f),
    T(STREAM_ORDERS_COMMANDS, EVENT_ORDER_PLACE, place_f),
    T(STREAM_ORDERS_EVENTS, EVENT_ORDER_PLACED, placed_f),
    T(STREAM_ORDERS_EVENTS, EVENT_ORDER_CONFIRMED, amount_f),
    T(STREAM_ORDERS_EVENTS, EVENT_ORDER_REJECTED, reason_f),
    T(STREAM_ORDERS_EVENTS, EVENT_ORDER_CANCELLED, reason_f),
    T(STREAM_INVENTORY_COMMANDS, EVENT_STOCK_RESERVE, reserve_f),
    T(STREAM_INVENTORY_COMMANDS, EVENT_STOCK_RELEASE, order_f),
    T(STREAM_INVENTORY_COMMANDS, EVENT_STOCK_COMMIT, order_f),
    T(STREAM_INVENTORY_COMMANDS, EVENT_PRODUCT_RESTOCK, restock_f),
    T(STREAM_INVENTORY_EVENTS, EVENT_STOCK_RESERVED, reserved_f),
    T(STREAM_INVENTORY_EVENTS, EVENT_STOCK_REJECTED, rejected_f),
    T(STREAM_INVENTORY_EVENTS, EVENT_STOCK_RELEASED, order_f),
    T(STREAM_INVENTORY_EVENTS, EVENT_STOCK_COMMITTED, order_f),
    T(STREAM_INVENTORY_EVENTS, EVENT_PRODUCT_RESTOCKED, restocked_f),
    T(STREAM_PAYMENTS_COMMANDS, EVENT_PAYMENT_CHARGE, amount_f),
    T(STREAM_PAYMENTS_COMMANDS, EVENT_PAYMENT_REFUND, order_f),
    T(STREAM_PAYMENTS_COMMANDS, EVENT_ACCOUNT_CREDIT, credit_f),
    T(STREAM_PAYMENTS_EVENTS, EVENT_ACCOUNT_OPENED, opened_f),
    T(STREAM_PAYMENTS_EVENTS, EVENT_ACCOUNT_CREDITED, credited_f),
    T(STREAM_PAYMENTS_EVENTS, EVENT_PAYMENT_SUCCEEDED, amount_f),
    T(STREAM_PAYMENTS_EVENTS, EVENT_PAYMENT_REFUNDED, amount_f),
    T(STREAM_PAYMENTS_EVENTS, EVENT_PAYMENT_FAILED, failed_f),
    {.stream = NULL},
};

int fixture_known(const char *stream, const char *type)
{
    return streams_find(catalog_fixture, stream, type) != NULL;
}

int fixture_entry(size_t i, const char **stream, const char **type)
{
    for (size_t k = 0; catalog_fixture[k].stream != NULL; k++) {
        if (k == i) {
            *stream = catalog_fixture[k].stream;
            *type = catalog_fixture[k].type;
            return 0;
        }
    }
    return -ENOENT;
}

int fixture_validate(const char *stream, const char *type, const struct json_t *data, char *err,
                     size_t errlen)
{
    const struct stream_type *t = streams_find(catalog_fixture, stream, type);

    if (t == NULL)
        return streams_unknown_type(stream, type, err, errlen);
    return streams_validate(t, data, err, errlen);
}

int fixture_parse(const char *stream, const char *entry_id, const struct stream_field *fields,
                  size_t nfields, struct envelope *out, char *err, size_t errlen)
{
    return envelope_parse(stream, entry_id, fields, nfields, catalog_fixture, NULL, out, err,
                          errlen);
}
