/* catalog_fixture.h -- a catalog for the tests of streams/: the types of the
 * four reference services as they stood when the catalog was closed, to
 * exercise the spec machinery (every kind, optional fields, arrays of
 * objects, unknown keys) without linking any module. The modules declare
 * their own (services/<name>/); this is test data.
 *
 * The wrappers do what a consumer does with a module's declarations:
 * look the type up, then check the payload against its spec. */
#ifndef TESTS_COMMON_CATALOG_FIXTURE_H
#define TESTS_COMMON_CATALOG_FIXTURE_H

#include <stddef.h>

#include <ripple/streams.h>

#define STREAM_USERS_COMMANDS "users.commands"
#define STREAM_USERS_EVENTS "users.events"
#define STREAM_ORDERS_COMMANDS "orders.commands"
#define STREAM_ORDERS_EVENTS "orders.events"
#define STREAM_INVENTORY_COMMANDS "inventory.commands"
#define STREAM_INVENTORY_EVENTS "inventory.events"
#define STREAM_PAYMENTS_COMMANDS "payments.commands"
#define STREAM_PAYMENTS_EVENTS "payments.events"

#define EVENT_USER_REGISTER "user.register"
#define EVENT_USER_REGISTERED "user.registered"
#define EVENT_ORDER_PLACE "order.place"
#define EVENT_ORDER_PLACED "order.placed"
#define EVENT_ORDER_CONFIRMED "order.confirmed"
#define EVENT_ORDER_REJECTED "order.rejected"
#define EVENT_ORDER_CANCELLED "order.cancelled"
#define EVENT_STOCK_RESERVE "stock.reserve"
#define EVENT_STOCK_RELEASE "stock.release"
#define EVENT_STOCK_COMMIT "stock.commit"
#define EVENT_PRODUCT_RESTOCK "product.restock"
#define EVENT_STOCK_RESERVED "stock.reserved"
#define EVENT_STOCK_REJECTED "stock.rejected"
#define EVENT_STOCK_RELEASED "stock.released"
#define EVENT_STOCK_COMMITTED "stock.committed"
#define EVENT_PRODUCT_RESTOCKED "product.restocked"
#define EVENT_PAYMENT_CHARGE "payment.charge"
#define EVENT_PAYMENT_REFUND "payment.refund"
#define EVENT_ACCOUNT_CREDIT "account.credit"
#define EVENT_ACCOUNT_OPENED "account.opened"
#define EVENT_ACCOUNT_CREDITED "account.credited"
#define EVENT_PAYMENT_SUCCEEDED "payment.succeeded"
#define EVENT_PAYMENT_REFUNDED "payment.refunded"
#define EVENT_PAYMENT_FAILED "payment.failed"

/* The fixture, ended by an entry whose stream is NULL. */
extern const struct stream_type catalog_fixture[];

/* 1 when the fixture declares type on stream. */
int fixture_known(const char *stream, const char *type);
/* Entry i's stream and type; -ENOENT past the end. */
int fixture_entry(size_t i, const char **stream, const char **type);
/* The type's spec applied to data: 0, -EINVAL (err says why) or -ENOENT
 * when the fixture does not declare type on stream. */
int fixture_validate(const char *stream, const char *type, const struct json_t *data, char *err,
                     size_t errlen);
/* envelope_parse, then fixture_validate: 0, -EINVAL or -ENOENT; on error
 * out holds no reference. */
int fixture_parse(const char *stream, const char *entry_id, const struct stream_field *fields,
                  size_t nfields, struct envelope *out, char *err, size_t errlen);

#endif
