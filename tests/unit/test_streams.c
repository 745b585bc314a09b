/* test_streams.c -- streams/: the catalog of DESIGN.md §5, payload validation
 * and envelope parsing.
 *
 * JSON in this file is written with ' for " (q() swaps them) so the cases
 * stay readable. Three layers: named cases for each rule and its edges; a
 * sweep over every catalog type that drops each field, breaks each field with
 * every bad value of its kind, adds an unknown field and moves the type to
 * every other stream; and envelope_parse over raw (pointer, length) fields. */
#include <criterion/criterion.h>

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include <ripple/streams.h>

#include "tests/common/catalog_fixture.h"

#define UA "6f1c2a3b-4d5e-4f60-8a7b-9c0d1e2f3a4b"
#define UB "0b2e4c6d-8f10-4a12-b456-789abcdef012"
#define UC "A0B1C2D3-E4F5-4A6B-8C7D-9E0F1A2B3C4D" /* upper case is fine */

#define MSG_UUID "expected a UUID (8-4-4-4-12 hex digits)"
#define MSG_EMAIL "expected an email address like name@example.com"
#define MSG_SKU "expected 1-64 of A-Z a-z 0-9 . _ -"
#define MSG_REASON "expected a snake_case word like out_of_stock"
#define MSG_POS "expected a positive integer"
#define MSG_NONNEG "expected a non-negative integer"
#define MSG_MAX_INT "must be at most 9007199254740991"

static const char *const all_streams[] = {
    STREAM_USERS_COMMANDS,    STREAM_USERS_EVENTS,       STREAM_ORDERS_COMMANDS,
    STREAM_ORDERS_EVENTS,     STREAM_INVENTORY_COMMANDS, STREAM_INVENTORY_EVENTS,
    STREAM_PAYMENTS_COMMANDS, STREAM_PAYMENTS_EVENTS,
};

/* ---------------------------------------------------------------------------
 * Helpers
 * ------------------------------------------------------------------------ */

/* A malloc'ed copy of s with every ' turned into ". */
static char *q(const char *s)
{
    char *c = strdup(s);

    cr_assert_not_null(c);
    for (char *p = c; *p != '\0'; p++) {
        if (*p == '\'')
            *p = '"';
    }
    return c;
}

/* Parses s (with ' for ") into a new reference: any JSON value, \u0000 allowed
 * so that the validator can be shown such strings. */
static json_t *J(const char *s)
{
    char *text = q(s);
    json_error_t je;
    json_t *v = json_loadb(text, strlen(text),
                           JSON_REJECT_DUPLICATES | JSON_DECODE_ANY | JSON_ALLOW_NUL, &je);

    cr_assert_not_null(v, "bad test JSON %s: %s", s, je.text);
    free(text);
    return v;
}

/* A string of n copies of c, malloc'ed. */
static char *repeat(char c, size_t n)
{
    char *s = malloc(n + 1);

    cr_assert_not_null(s);
    memset(s, c, n);
    s[n] = '\0';
    return s;
}

/* Validates a copy of data (borrowed) and checks rc and the message; on
 * success the error buffer must be left alone. */
static void check_value(const char *stream, const char *type, const json_t *data, int want_rc,
                        const char *want_err, const char *what)
{
    char err[STREAMS_MAX_ERR] = "untouched";
    size_t refs = data != NULL ? data->refcount : 0;
    int rc = fixture_validate(stream, type, data, err, sizeof(err));

    cr_expect_eq(rc, want_rc, "%s %s %s: rc %d, want %d (err: %s)", stream, type, what, rc, want_rc,
                 err);
    cr_expect_str_eq(err, want_rc == 0 ? "untouched" : want_err, "%s %s %s: got \"%s\"", stream,
                     type, what, err);
    if (data != NULL)
        cr_expect_eq(data->refcount, refs, "data is borrowed");
}

static void check(const char *stream, const char *type, const char *json, int want_rc,
                  const char *want_err)
{
    json_t *data = J(json);

    check_value(stream, type, data, want_rc, want_err, json);
    json_decref(data);
}

#define OK(stream, type, json) check(stream, type, json, 0, NULL)
#define BAD(stream, type, json, msg) check(stream, type, json, -EINVAL, msg)

/* ---------------------------------------------------------------------------
 * Names and lookups
 * ------------------------------------------------------------------------ */

Test(streams, names_are_the_catalogs)
{
    cr_expect_str_eq(STREAM_USERS_COMMANDS, "users.commands");
    cr_expect_str_eq(STREAM_PAYMENTS_EVENTS, "payments.events");
    cr_expect_str_eq(EVENT_PRODUCT_RESTOCK, "product.restock");
    cr_expect_str_eq(EVENT_PAYMENT_FAILED, "payment.failed");
    cr_expect_str_eq(ENVELOPE_TRACE, "trace");
    cr_expect_str_eq(STREAMS_DLQ_SUFFIX, ".dlq");
    cr_expect_str_eq(DLQ_DELIVERIES, "deliveries");
}

Test(streams, is_commands)
{
    cr_expect_eq(streams_is_commands(STREAM_USERS_COMMANDS), 1);
    cr_expect_eq(streams_is_commands(STREAM_INVENTORY_COMMANDS), 1);
    cr_expect_eq(streams_is_commands("x.commands"), 1);
    cr_expect_eq(streams_is_commands(STREAM_USERS_EVENTS), 0);
    cr_expect_eq(streams_is_commands("users.commands.dlq"), 0);
    cr_expect_eq(streams_is_commands("commands"), 0);
    cr_expect_eq(streams_is_commands("userscommands"), 0);
    cr_expect_eq(streams_is_commands(""), 0);
    cr_expect_eq(streams_is_commands(NULL), 0);
}

Test(streams, known_type)
{
    cr_expect_eq(fixture_known(STREAM_USERS_COMMANDS, EVENT_USER_REGISTER), 1);
    cr_expect_eq(fixture_known(STREAM_PAYMENTS_EVENTS, EVENT_PAYMENT_FAILED), 1);
    cr_expect_eq(fixture_known(STREAM_USERS_EVENTS, EVENT_USER_REGISTER), 0);
    cr_expect_eq(fixture_known(STREAM_USERS_COMMANDS, "user.REGISTER"), 0);
    cr_expect_eq(fixture_known(STREAM_USERS_COMMANDS, "user.register "), 0);
    cr_expect_eq(fixture_known("users.commands.dlq", EVENT_USER_REGISTER), 0);
    cr_expect_eq(fixture_known(NULL, EVENT_USER_REGISTER), 0);
    cr_expect_eq(fixture_known(STREAM_USERS_COMMANDS, NULL), 0);
}

Test(streams, the_fixture_lists_each_type_on_one_stream)
{
    const char *stream, *type;
    size_t n = 0;

    while (fixture_entry(n, &stream, &type) == 0) {
        size_t on = 0;

        cr_expect_eq(fixture_known(stream, type), 1, "%s %s", stream, type);
        for (size_t s = 0; s < ARRAY_SIZE(all_streams); s++)
            on += (size_t)fixture_known(all_streams[s], type);
        cr_expect_eq(on, 1, "%s is on %zu streams", type, on);
        n++;
    }
    cr_expect_gt(n, 0);
    cr_expect_eq(fixture_entry(n, &stream, &type), -ENOENT);
    cr_expect_eq(fixture_entry((size_t)-1, &stream, &type), -ENOENT);
}

Test(streams, dlq_name)
{
    char buf[32] = "junk";

    cr_expect_eq(streams_dlq_name(STREAM_USERS_COMMANDS, buf, sizeof(buf)), 0);
    cr_expect_str_eq(buf, "users.commands.dlq");
    /* "users.commands.dlq" is 18 bytes: 19 fit, 18 do not */
    cr_expect_eq(streams_dlq_name(STREAM_USERS_COMMANDS, buf, 19), 0);
    cr_expect_str_eq(buf, "users.commands.dlq");
    cr_expect_eq(streams_dlq_name(STREAM_USERS_COMMANDS, buf, 18), -ENAMETOOLONG);
    cr_expect_str_eq(buf, "");
    cr_expect_eq(streams_dlq_name(STREAM_USERS_COMMANDS, NULL, 0), -ENAMETOOLONG);
    cr_expect_eq(streams_dlq_name("", buf, sizeof(buf)), -EINVAL);
    cr_expect_eq(streams_dlq_name(NULL, buf, sizeof(buf)), -EINVAL);
}

/* ---------------------------------------------------------------------------
 * streams_validate: named cases
 * ------------------------------------------------------------------------ */

Test(streams_validate, examples_from_the_brief)
{
    BAD(STREAM_INVENTORY_COMMANDS, EVENT_PRODUCT_RESTOCK, "{'sku':'SKU-1','qty':0}",
        "data.qty: " MSG_POS);
    BAD(STREAM_ORDERS_COMMANDS, EVENT_ORDER_PLACE,
        "{'user_id':'" UA "','items':[{'sku':'A','qty':1},{'sku':'B','qty':1},{'qty':1}]}",
        "data.items[2].sku: required");
    BAD(STREAM_USERS_COMMANDS, EVENT_USER_REGISTER, "{'name':'Ann','email':7}",
        "data.email: expected a string");
    BAD(STREAM_USERS_COMMANDS, EVENT_USER_REGISTER, "['Ann']", "data: expected a JSON object");
    BAD(STREAM_USERS_COMMANDS, EVENT_USER_REGISTER,
        "{'name':'Ann','email':'ann@example.com','foo':1}", "data.foo: unknown field");
    check(STREAM_USERS_COMMANDS, "x.y", "{}", -ENOENT,
          "type: unknown type \"x.y\" for stream users.commands");
}

Test(streams_validate, data_must_be_an_object)
{
    check_value(STREAM_USERS_COMMANDS, EVENT_USER_REGISTER, NULL, -EINVAL,
                "data: expected a JSON object", "NULL");
    BAD(STREAM_USERS_COMMANDS, EVENT_USER_REGISTER, "'x'", "data: expected a JSON object");
    BAD(STREAM_USERS_COMMANDS, EVENT_USER_REGISTER, "null", "data: expected a JSON object");
    BAD(STREAM_USERS_COMMANDS, EVENT_USER_REGISTER, "{}", "data.name: required");
}

Test(streams_validate, unknown_type_wins_over_bad_data)
{
    check_value(STREAM_USERS_COMMANDS, EVENT_USER_REGISTERED, NULL, -ENOENT,
                "type: unknown type \"user.registered\" for stream users.commands", "NULL");
    check(STREAM_PAYMENTS_COMMANDS, EVENT_PAYMENT_SUCCEEDED, "[]", -ENOENT,
          "type: unknown type \"payment.succeeded\" for stream payments.commands");
    check(STREAM_USERS_COMMANDS, "", "{}", -ENOENT,
          "type: unknown type \"\" for stream users.commands");
    check(STREAM_USERS_COMMANDS, "x\ny\x80", "{}", -ENOENT,
          "type: unknown type \"x?y?\" for stream users.commands");
}

Test(streams_validate, uuids)
{
    OK(STREAM_USERS_EVENTS, EVENT_USER_REGISTERED,
       "{'user_id':'" UC "','name':'Ann','email':'ann@example.com'}");
    BAD(STREAM_USERS_EVENTS, EVENT_USER_REGISTERED,
        "{'user_id':'" UA "\\u0000','name':'Ann','email':'a@b'}", "data.user_id: " MSG_UUID);
    BAD(STREAM_PAYMENTS_COMMANDS, EVENT_PAYMENT_REFUND, "{'order_id':'" UA " '}",
        "data.order_id: " MSG_UUID);
    BAD(STREAM_PAYMENTS_COMMANDS, EVENT_PAYMENT_REFUND, "{'order_id':' " UA "'}",
        "data.order_id: " MSG_UUID);
}

Test(streams_validate, names_are_trimmed_and_bounded)
{
    char json[400];
    char *hundred = repeat('n', 100);

    snprintf(json, sizeof(json), "{'name':' \\t%s\\n ','email':'a@b'}", hundred);
    OK(STREAM_USERS_COMMANDS, EVENT_USER_REGISTER, json);
    snprintf(json, sizeof(json), "{'name':'%sx','email':'a@b'}", hundred);
    BAD(STREAM_USERS_COMMANDS, EVENT_USER_REGISTER, json, "data.name: must be at most 100 bytes");
    OK(STREAM_USERS_COMMANDS, EVENT_USER_REGISTER, "{'name':'Zo\\u00eb','email':'a@b'}");
    OK(STREAM_USERS_COMMANDS, EVENT_USER_REGISTER, "{'name':'A','email':'a@b'}");
    BAD(STREAM_USERS_COMMANDS, EVENT_USER_REGISTER, "{'name':'A\\u007fB','email':'a@b'}",
        "data.name: must not contain control characters");
    free(hundred);
}

Test(streams_validate, emails)
{
    char json[400];
    char *local = repeat('e', 250);

    snprintf(json, sizeof(json), "{'name':'Ann','email':' %s@b.c '}", local);
    OK(STREAM_USERS_COMMANDS, EVENT_USER_REGISTER, json); /* 254 after trimming */
    snprintf(json, sizeof(json), "{'name':'Ann','email':'%s@bc.d'}", local);
    BAD(STREAM_USERS_COMMANDS, EVENT_USER_REGISTER, json, "data.email: must be at most 254 bytes");
    OK(STREAM_USERS_COMMANDS, EVENT_USER_REGISTER, "{'name':'Ann','email':'Ann.O+x@Example.COM'}");
    BAD(STREAM_USERS_COMMANDS, EVENT_USER_REGISTER, "{'name':'Ann','email':'a@b\\tc'}",
        "data.email: " MSG_EMAIL);
    free(local);
}

Test(streams_validate, skus)
{
    char json[200];
    char *sku = repeat('S', 64);

    snprintf(json, sizeof(json), "{'sku':'%s','qty':1}", sku);
    OK(STREAM_INVENTORY_COMMANDS, EVENT_PRODUCT_RESTOCK, json);
    OK(STREAM_INVENTORY_COMMANDS, EVENT_PRODUCT_RESTOCK, "{'sku':'a.Z_0-9','qty':1}");
    snprintf(json, sizeof(json), "{'sku':'%sS','qty':1}", sku);
    BAD(STREAM_INVENTORY_COMMANDS, EVENT_PRODUCT_RESTOCK, json, "data.sku: " MSG_SKU);
    free(sku);
}

Test(streams_validate, reasons)
{
    char json[200];
    char *word = repeat('r', 64);

    snprintf(json, sizeof(json), "{'order_id':'" UA "','reason':'%s'}", word);
    OK(STREAM_INVENTORY_EVENTS, EVENT_STOCK_REJECTED, json);
    snprintf(json, sizeof(json), "{'order_id':'" UA "','reason':'%sr'}", word);
    BAD(STREAM_INVENTORY_EVENTS, EVENT_STOCK_REJECTED, json, "data.reason: " MSG_REASON);
    OK(STREAM_INVENTORY_EVENTS, EVENT_STOCK_REJECTED, "{'order_id':'" UA "','reason':'x'}");
    OK(STREAM_INVENTORY_EVENTS, EVENT_STOCK_REJECTED, "{'order_id':'" UA "','reason':'a1_b2'}");
    OK(STREAM_ORDERS_EVENTS, EVENT_ORDER_CANCELLED,
       "{'order_id':'" UA "','user_id':'" UB "','reason':'timeout'}");
    free(word);
}

Test(streams_validate, integer_edges)
{
    OK(STREAM_INVENTORY_COMMANDS, EVENT_PRODUCT_RESTOCK, "{'sku':'A','qty':1000000}");
    OK(STREAM_INVENTORY_COMMANDS, EVENT_PRODUCT_RESTOCK, "{'sku':'A','qty':1}");
    OK(STREAM_PAYMENTS_COMMANDS, EVENT_ACCOUNT_CREDIT,
       "{'user_id':'" UA "','amount_cents':9007199254740991}");
    OK(STREAM_PAYMENTS_COMMANDS, EVENT_ACCOUNT_CREDIT, "{'user_id':'" UA "','amount_cents':1}");
    OK(STREAM_PAYMENTS_EVENTS, EVENT_ACCOUNT_OPENED, "{'user_id':'" UA "','balance_cents':0}");
    OK(STREAM_INVENTORY_EVENTS, EVENT_PRODUCT_RESTOCKED, "{'sku':'A','qty':5,'available':0}");
    OK(STREAM_INVENTORY_EVENTS, EVENT_PRODUCT_RESTOCKED,
       "{'sku':'A','qty':5,'available':2000000}"); /* a level, not one qty */
    BAD(STREAM_PAYMENTS_COMMANDS, EVENT_ACCOUNT_CREDIT,
        "{'user_id':'" UA "','amount_cents':-9223372036854775807}", "data.amount_cents: " MSG_POS);
    BAD(STREAM_PAYMENTS_COMMANDS, EVENT_ACCOUNT_CREDIT,
        "{'user_id':'" UA "','amount_cents':9223372036854775807}",
        "data.amount_cents: " MSG_MAX_INT);
    BAD(STREAM_PAYMENTS_COMMANDS, EVENT_ACCOUNT_CREDIT, "{'user_id':'" UA "','amount_cents':1e2}",
        "data.amount_cents: " MSG_POS);
}

Test(streams_validate, product_restock_optional_fields)
{
    OK(STREAM_INVENTORY_COMMANDS, EVENT_PRODUCT_RESTOCK, "{'sku':'SKU-1','qty':50}");
    OK(STREAM_INVENTORY_COMMANDS, EVENT_PRODUCT_RESTOCK, "{'sku':'SKU-1','qty':50,'name':'Mug'}");
    OK(STREAM_INVENTORY_COMMANDS, EVENT_PRODUCT_RESTOCK,
       "{'sku':'SKU-1','qty':50,'price_cents':1299}");
    OK(STREAM_INVENTORY_COMMANDS, EVENT_PRODUCT_RESTOCK,
       "{'price_cents':1299,'name':'Mug','qty':50,'sku':'SKU-1'}");
    /* optional means "may be absent", never "may be null" */
    BAD(STREAM_INVENTORY_COMMANDS, EVENT_PRODUCT_RESTOCK, "{'sku':'S','qty':5,'name':null}",
        "data.name: expected a string");
    BAD(STREAM_INVENTORY_COMMANDS, EVENT_PRODUCT_RESTOCK, "{'sku':'S','qty':5,'price_cents':null}",
        "data.price_cents: " MSG_POS);
    BAD(STREAM_INVENTORY_COMMANDS, EVENT_PRODUCT_RESTOCK, "{'sku':'S','qty':5,'name':'  '}",
        "data.name: must not be empty");
    BAD(STREAM_INVENTORY_COMMANDS, EVENT_PRODUCT_RESTOCK, "{'sku':'S','qty':5,'price_cents':0}",
        "data.price_cents: " MSG_POS);
}

/* "{'user_id':UA,'items':[{'sku':'S0','qty':1}, ... n items]}", malloc'ed. */
static char *order_with_items(size_t n)
{
    size_t cap = 64 + n * 32, off;
    char *s = malloc(cap);

    cr_assert_not_null(s);
    off = (size_t)snprintf(s, cap, "{'user_id':'" UA "','items':[");
    for (size_t i = 0; i < n; i++)
        off += (size_t)snprintf(s + off, cap - off, "%s{'sku':'S%zu','qty':1}", i ? "," : "", i);
    cr_assert_lt(off + 3, cap);
    memcpy(s + off, "]}", 3);
    return s;
}

Test(streams_validate, items_count)
{
    char *hundred = order_with_items(100), *more = order_with_items(101);

    OK(STREAM_ORDERS_COMMANDS, EVENT_ORDER_PLACE, hundred);
    BAD(STREAM_ORDERS_COMMANDS, EVENT_ORDER_PLACE, more, "data.items: must have at most 100 items");
    free(hundred);
    free(more);
}

Test(streams_validate, items_are_checked_in_order)
{
    /* the first bad item is reported, and a bad item before a repeat */
    BAD(STREAM_INVENTORY_COMMANDS, EVENT_STOCK_RESERVE,
        "{'order_id':'" UA "','items':[{'sku':'A','qty':1},{'sku':'A','qty':0}]}",
        "data.items[1].qty: " MSG_POS);
    BAD(STREAM_INVENTORY_COMMANDS, EVENT_STOCK_RESERVE,
        "{'order_id':'" UA "','items':[{'sku':'A','qty':1},{'sku':'a','qty':1},{'sku':'A',"
        "'qty':3}]}",
        "data.items[2].sku: duplicate sku \"A\" (also items[0])");
    OK(STREAM_INVENTORY_COMMANDS, EVENT_STOCK_RESERVE,
       "{'order_id':'" UA "','items':[{'sku':'A','qty':1},{'sku':'a','qty':1}]}");
    OK(STREAM_INVENTORY_COMMANDS, EVENT_STOCK_RESERVE,
       "{'order_id':'" UA "','items':[{'qty':1,'sku':'A'}]}");
}

Test(streams_validate, unknown_keys_are_named)
{
    char json[300];
    char *key = repeat('k', 100), *shown = repeat('k', 64), want[200];
    json_t *data;

    /* a typo is reported as the typo, not as the field it misses */
    BAD(STREAM_INVENTORY_COMMANDS, EVENT_PRODUCT_RESTOCK, "{'skuu':'A','qty':1}",
        "data.skuu: unknown field");
    BAD(STREAM_USERS_COMMANDS, EVENT_USER_REGISTER, "{'name':'Ann','email':'a@b','na\\u00efve':1}",
        "data.na??ve: unknown field");
    /* jansson's parser refuses NUL in keys, but a producer's code can set one;
     * json_deep_copy cuts it, so the key is not named, but it is rejected */
    data = J("{'name':'Ann','email':'a@b'}");
    cr_assert_eq(json_object_setn_new(data, "name\0x", 6, json_integer(1)), 0);
    check_value(STREAM_USERS_COMMANDS, EVENT_USER_REGISTER, data, -EINVAL,
                "data: has an unknown field", "name\\0x");
    json_decref(data);
    snprintf(json, sizeof(json), "{'name':'Ann','email':'a@b','%s':1}", key);
    snprintf(want, sizeof(want), "data.%s...: unknown field", shown);
    BAD(STREAM_USERS_COMMANDS, EVENT_USER_REGISTER, json, want);
    free(key);
    free(shown);
}

Test(streams_validate, small_or_no_error_buffer)
{
    json_t *data = J("{'name':5,'email':'a@b'}");
    char err[10];

    cr_expect_eq(fixture_validate(STREAM_USERS_COMMANDS, EVENT_USER_REGISTER, data, NULL, 0),
                 -EINVAL);
    cr_expect_eq(
        fixture_validate(STREAM_USERS_COMMANDS, EVENT_USER_REGISTER, data, err, sizeof(err)),
        -EINVAL);
    cr_expect_str_eq(err, "data.name");
    cr_expect_eq(fixture_validate(STREAM_USERS_COMMANDS, "nope", data, err, 1), -ENOENT);
    cr_expect_str_eq(err, "");
    json_decref(data);
}

/* ---------------------------------------------------------------------------
 * streams_validate: every type, every field
 * ------------------------------------------------------------------------ */

/* A valid payload for each catalog type, with every field, optional ones
 * too. optional lists the fields that may be dropped. */
struct sample {
    const char *stream, *type, *json, *optional;
};

#define ITEMS "[{'sku':'SKU-1','qty':2},{'sku':'SKU-2','qty':1}]"

static const struct sample samples[] = {
    {STREAM_USERS_COMMANDS, EVENT_USER_REGISTER, "{'name':'Ann','email':'ann@example.com'}", ""},
    {STREAM_USERS_EVENTS, EVENT_USER_REGISTERED,
     "{'user_id':'" UA "','name':'Ann','email':'ann@example.com'}", ""},
    {STREAM_ORDERS_COMMANDS, EVENT_ORDER_PLACE, "{'user_id':'" UA "','items':" ITEMS "}", ""},
    {STREAM_ORDERS_EVENTS, EVENT_ORDER_PLACED,
     "{'order_id':'" UB "','user_id':'" UA "','items':" ITEMS "}", ""},
    {STREAM_ORDERS_EVENTS, EVENT_ORDER_CONFIRMED,
     "{'order_id':'" UB "','user_id':'" UA "','amount_cents':2598}", ""},
    {STREAM_ORDERS_EVENTS, EVENT_ORDER_REJECTED,
     "{'order_id':'" UB "','user_id':'" UA "','reason':'out_of_stock'}", ""},
    {STREAM_ORDERS_EVENTS, EVENT_ORDER_CANCELLED,
     "{'order_id':'" UB "','user_id':'" UA "','reason':'insufficient_funds'}", ""},
    {STREAM_INVENTORY_COMMANDS, EVENT_STOCK_RESERVE, "{'order_id':'" UB "','items':" ITEMS "}", ""},
    {STREAM_INVENTORY_COMMANDS, EVENT_STOCK_RELEASE, "{'order_id':'" UB "'}", ""},
    {STREAM_INVENTORY_COMMANDS, EVENT_STOCK_COMMIT, "{'order_id':'" UB "'}", ""},
    {STREAM_INVENTORY_COMMANDS, EVENT_PRODUCT_RESTOCK,
     "{'sku':'SKU-1','qty':50,'name':'Mug','price_cents':1299}", " name price_cents "},
    {STREAM_INVENTORY_EVENTS, EVENT_STOCK_RESERVED, "{'order_id':'" UB "','amount_cents':2598}",
     ""},
    {STREAM_INVENTORY_EVENTS, EVENT_STOCK_REJECTED, "{'order_id':'" UB "','reason':'unknown_sku'}",
     ""},
    {STREAM_INVENTORY_EVENTS, EVENT_STOCK_RELEASED, "{'order_id':'" UB "'}", ""},
    {STREAM_INVENTORY_EVENTS, EVENT_STOCK_COMMITTED, "{'order_id':'" UB "'}", ""},
    {STREAM_INVENTORY_EVENTS, EVENT_PRODUCT_RESTOCKED, "{'sku':'SKU-1','qty':50,'available':57}",
     ""},
    {STREAM_PAYMENTS_COMMANDS, EVENT_PAYMENT_CHARGE,
     "{'order_id':'" UB "','user_id':'" UA "','amount_cents':2598}", ""},
    {STREAM_PAYMENTS_COMMANDS, EVENT_PAYMENT_REFUND, "{'order_id':'" UB "'}", ""},
    {STREAM_PAYMENTS_COMMANDS, EVENT_ACCOUNT_CREDIT, "{'user_id':'" UA "','amount_cents':5000}",
     ""},
    {STREAM_PAYMENTS_EVENTS, EVENT_ACCOUNT_OPENED, "{'user_id':'" UA "','balance_cents':10000}",
     ""},
    {STREAM_PAYMENTS_EVENTS, EVENT_ACCOUNT_CREDITED,
     "{'user_id':'" UA "','amount_cents':5000,'balance_cents':15000}", ""},
    {STREAM_PAYMENTS_EVENTS, EVENT_PAYMENT_SUCCEEDED,
     "{'order_id':'" UB "','user_id':'" UA "','amount_cents':2598}", ""},
    {STREAM_PAYMENTS_EVENTS, EVENT_PAYMENT_REFUNDED,
     "{'order_id':'" UB "','user_id':'" UA "','amount_cents':2598}", ""},
    {STREAM_PAYMENTS_EVENTS, EVENT_PAYMENT_FAILED,
     "{'order_id':'" UB "','user_id':'" UA "','reason':'insufficient_funds'}", ""},
};

/* The kind of each field name the catalog uses. */
static const struct {
    const char *field, *kind;
} field_kinds[] = {
    {"user_id", "uuid"},       {"order_id", "uuid"},     {"name", "name"},
    {"email", "email"},        {"sku", "sku"},           {"qty", "qty"},
    {"amount_cents", "cents"}, {"price_cents", "cents"}, {"balance_cents", "level"},
    {"available", "level"},    {"reason", "reason"},     {"items", "items"},
};

/* Bad values per kind; the message is what follows "data.<field>". A NULL
 * value stands for an array of 101 valid items. */
struct mutation {
    const char *kind, *value, *msg;
};

#define X10 "xxxxxxxxxx"

static const struct mutation mutations[] = {
    {"uuid", "7", ": expected a string"},
    {"uuid", "null", ": expected a string"},
    {"uuid", "['" UA "']", ": expected a string"},
    {"uuid", "''", ": " MSG_UUID},
    {"uuid", "'not-a-uuid'", ": " MSG_UUID},
    {"uuid", "'6f1c2a3b-4d5e-4f60-8a7b-9c0d1e2f3a4'", ": " MSG_UUID},   /* 35 */
    {"uuid", "'6f1c2a3b-4d5e-4f60-8a7b-9c0d1e2f3a4b0'", ": " MSG_UUID}, /* 37 */
    {"uuid", "'6f1c2a3b4-d5e-4f60-8a7b-9c0d1e2f3a4b'", ": " MSG_UUID},  /* dash moved */
    {"uuid", "'6f1c2a3g-4d5e-4f60-8a7b-9c0d1e2f3a4b'", ": " MSG_UUID},  /* not hex */
    {"uuid", "'6f1c2a3b04d5e04f6008a7b09c0d1e2f3a4b'", ": " MSG_UUID},  /* no dashes */
    {"uuid", "'{6f1c2a3b-4d5e-4f60-8a7b-9c0d1e2f3a}'", ": " MSG_UUID},
    {"name", "5", ": expected a string"},
    {"name", "true", ": expected a string"},
    {"name", "''", ": must not be empty"},
    {"name", "' \\t\\n '", ": must not be empty"},
    {"name", "'" X10 X10 X10 X10 X10 X10 X10 X10 X10 X10 "x'", ": must be at most 100 bytes"},
    {"name", "'A\\u0001B'", ": must not contain control characters"},
    {"email", "7", ": expected a string"},
    {"email", "{}", ": expected a string"},
    {"email", "''", ": " MSG_EMAIL},
    {"email", "'nope'", ": " MSG_EMAIL},
    {"email", "'a@b@c'", ": " MSG_EMAIL},
    {"email", "'@b.c'", ": " MSG_EMAIL},
    {"email", "'a@'", ": " MSG_EMAIL},
    {"email", "'a b@c.d'", ": " MSG_EMAIL},
    {"email", "'a@b\\u0001'", ": " MSG_EMAIL},
    {"sku", "5", ": expected a string"},
    {"sku", "''", ": " MSG_SKU},
    {"sku", "'SKU 1'", ": " MSG_SKU},
    {"sku", "'SKU/1'", ": " MSG_SKU},
    {"sku", "'SK\\u00dc'", ": " MSG_SKU},
    {"qty", "0", ": " MSG_POS},
    {"qty", "-1", ": " MSG_POS},
    {"qty", "'3'", ": " MSG_POS},
    {"qty", "1.5", ": " MSG_POS},
    {"qty", "1.0", ": " MSG_POS},
    {"qty", "true", ": " MSG_POS},
    {"qty", "null", ": " MSG_POS},
    {"qty", "1000001", ": must be at most 1000000"},
    {"cents", "0", ": " MSG_POS},
    {"cents", "-5", ": " MSG_POS},
    {"cents", "'100'", ": " MSG_POS},
    {"cents", "99.5", ": " MSG_POS},
    {"cents", "false", ": " MSG_POS},
    {"cents", "9007199254740992", ": " MSG_MAX_INT},
    {"level", "-1", ": " MSG_NONNEG},
    {"level", "'0'", ": " MSG_NONNEG},
    {"level", "0.5", ": " MSG_NONNEG},
    {"level", "null", ": " MSG_NONNEG},
    {"level", "9007199254740992", ": " MSG_MAX_INT},
    {"reason", "5", ": expected a string"},
    {"reason", "''", ": " MSG_REASON},
    {"reason", "'Out_of_stock'", ": " MSG_REASON},
    {"reason", "'1st'", ": " MSG_REASON},
    {"reason", "'_x'", ": " MSG_REASON},
    {"reason", "'out-of-stock'", ": " MSG_REASON},
    {"reason", "'out of stock'", ": " MSG_REASON},
    {"items", "{}", ": expected an array of {sku, qty}"},
    {"items", "'SKU-1'", ": expected an array of {sku, qty}"},
    {"items", "[]", ": must not be empty"},
    {"items", NULL, ": must have at most 100 items"},
    {"items", "[5]", "[0]: expected a JSON object"},
    {"items", "[{'sku':'A','qty':1},[]]", "[1]: expected a JSON object"},
    {"items", "[{'sku':'A','qty':1},{'qty':2}]", "[1].sku: required"},
    {"items", "[{'sku':'A'}]", "[0].qty: required"},
    {"items", "[{'sku':'A','qty':1,'price':5}]", "[0].price: unknown field"},
    {"items", "[{'sku':7,'qty':1}]", "[0].sku: expected a string"},
    {"items", "[{'sku':'A B','qty':1}]", "[0].sku: " MSG_SKU},
    {"items", "[{'sku':'A','qty':0}]", "[0].qty: " MSG_POS},
    {"items", "[{'sku':'A','qty':-1}]", "[0].qty: " MSG_POS},
    {"items", "[{'sku':'A','qty':'3'}]", "[0].qty: " MSG_POS},
    {"items", "[{'sku':'A','qty':1.5}]", "[0].qty: " MSG_POS},
    {"items", "[{'sku':'A','qty':1000001}]", "[0].qty: must be at most 1000000"},
    {"items", "[{'sku':'A','qty':1},{'sku':'A','qty':2}]",
     "[1].sku: duplicate sku \"A\" (also items[0])"},
};

static const char *kind_of(const char *field)
{
    for (size_t i = 0; i < ARRAY_SIZE(field_kinds); i++) {
        if (strcmp(field_kinds[i].field, field) == 0)
            return field_kinds[i].kind;
    }
    return NULL;
}

static json_t *mutation_value(const struct mutation *m)
{
    json_t *order, *items;
    char *text;

    if (m->value != NULL)
        return J(m->value);
    text = order_with_items(STREAMS_MAX_ITEMS + 1);
    order = J(text);
    items = json_incref(json_object_get(order, "items"));
    json_decref(order);
    free(text);
    return items;
}

static int is_optional(const struct sample *s, const char *field)
{
    char word[64];

    snprintf(word, sizeof(word), " %s ", field);
    return strstr(s->optional, word) != NULL;
}

Test(streams_catalog, every_type_has_a_valid_sample)
{
    const char *stream, *type;
    size_t i;

    for (i = 0; fixture_entry(i, &stream, &type) == 0; i++) {
        size_t found = 0;

        for (size_t s = 0; s < ARRAY_SIZE(samples); s++)
            found += strcmp(samples[s].type, type) == 0 && strcmp(samples[s].stream, stream) == 0;
        cr_expect_eq(found, 1, "%s on %s: %zu samples", type, stream, found);
    }
    cr_expect_eq(i, ARRAY_SIZE(samples));
    for (size_t s = 0; s < ARRAY_SIZE(samples); s++)
        OK(samples[s].stream, samples[s].type, samples[s].json);
}

Test(streams_catalog, every_field_is_required_unless_optional)
{
    for (size_t s = 0; s < ARRAY_SIZE(samples); s++) {
        json_t *data = J(samples[s].json);
        const char *key;
        json_t *v;

        json_object_foreach(data, key, v)
        {
            json_t *less = json_deep_copy(data);
            char want[128];

            json_object_del(less, key);
            snprintf(want, sizeof(want), "data.%s: required", key);
            if (is_optional(&samples[s], key))
                check_value(samples[s].stream, samples[s].type, less, 0, NULL, key);
            else
                check_value(samples[s].stream, samples[s].type, less, -EINVAL, want, key);
            json_decref(less);
        }
        json_decref(data);
    }
}

/* Sets data[key] to each bad value of key's kind in turn. */
static void break_field(const struct sample *s, const json_t *data, const char *key)
{
    const char *kind = kind_of(key);
    size_t applied = 0;

    cr_assert_not_null(kind, "the test knows no kind for field %s", key);
    for (size_t m = 0; m < ARRAY_SIZE(mutations); m++) {
        json_t *bad;
        char want[STREAMS_MAX_ERR];

        if (strcmp(mutations[m].kind, kind) != 0)
            continue;
        bad = json_deep_copy(data);
        cr_assert_eq(json_object_set_new(bad, key, mutation_value(&mutations[m])), 0);
        snprintf(want, sizeof(want), "data.%s%s", key, mutations[m].msg);
        check_value(s->stream, s->type, bad, -EINVAL, want,
                    mutations[m].value != NULL ? mutations[m].value : "101 items");
        json_decref(bad);
        applied++;
    }
    cr_expect_geq(applied, 4, "%s: only %zu bad values", key, applied);
}

Test(streams_catalog, every_field_rejects_every_bad_value_of_its_kind)
{
    size_t fields = 0;

    for (size_t s = 0; s < ARRAY_SIZE(samples); s++) {
        json_t *data = J(samples[s].json);
        const char *key;
        json_t *v;

        json_object_foreach(data, key, v)
        {
            break_field(&samples[s], data, key);
            fields++;
        }
        json_decref(data);
    }
    cr_expect_eq(fields, 56, "fields over all samples: %zu", fields);
}

Test(streams_catalog, every_type_rejects_an_unknown_field)
{
    for (size_t s = 0; s < ARRAY_SIZE(samples); s++) {
        json_t *data = J(samples[s].json);

        json_object_set_new(data, "bogus", json_integer(1));
        check_value(samples[s].stream, samples[s].type, data, -EINVAL, "data.bogus: unknown field",
                    "+bogus");
        json_decref(data);
    }
}

Test(streams_catalog, every_type_needs_an_object)
{
    for (size_t s = 0; s < ARRAY_SIZE(samples); s++) {
        json_t *arr = J("[]");

        check_value(samples[s].stream, samples[s].type, arr, -EINVAL,
                    "data: expected a JSON object", "[]");
        check_value(samples[s].stream, samples[s].type, NULL, -EINVAL,
                    "data: expected a JSON object", "NULL");
        json_decref(arr);
    }
}

Test(streams_catalog, every_type_is_unknown_on_the_other_streams)
{
    for (size_t s = 0; s < ARRAY_SIZE(samples); s++) {
        for (size_t t = 0; t < ARRAY_SIZE(all_streams); t++) {
            char want[STREAMS_MAX_ERR];

            if (strcmp(all_streams[t], samples[s].stream) == 0)
                continue;
            snprintf(want, sizeof(want), "type: unknown type \"%s\" for stream %s", samples[s].type,
                     all_streams[t]);
            check(all_streams[t], samples[s].type, samples[s].json, -ENOENT, want);
        }
    }
}

/* ---------------------------------------------------------------------------
 * envelope_parse
 * ------------------------------------------------------------------------ */

#define ENTRY_ID "1700000000000-0"
#define MAX_TEST_FIELDS 16

/* Raw fields as a consumer would hand them over. Values added with add()
 * are copies with ' turned into ", and not NUL-terminated. */
struct entry {
    struct stream_field f[MAX_TEST_FIELDS];
    char *owned[MAX_TEST_FIELDS];
    size_t n;
};

static void add_span(struct entry *e, const char *name, const char *value, size_t len)
{
    cr_assert_lt(e->n, MAX_TEST_FIELDS);
    e->f[e->n] = (struct stream_field){name, strlen(name), value, len};
    e->n++;
}

static void add(struct entry *e, const char *name, const char *value)
{
    size_t len = strlen(value);
    char *copy = q(value);

    /* no NUL terminator for the parser to lean on */
    e->owned[e->n] = realloc(copy, len > 0 ? len : 1);
    cr_assert_not_null(e->owned[e->n]);
    add_span(e, name, e->owned[e->n], len);
}

static void entry_free(struct entry *e)
{
    for (size_t i = 0; i < e->n; i++)
        free(e->owned[i]);
    memset(e, 0, sizeof(*e));
}

static int parse(const char *stream, const struct entry *e, struct envelope *env, char *err)
{
    memcpy(err, "untouched", sizeof("untouched"));
    return fixture_parse(stream, ENTRY_ID, e->f, e->n, env, err, STREAMS_MAX_ERR);
}

/* Parses e from stream and expects rc and err; on error out holds no data. */
static void expect_parse(const char *stream, struct entry *e, int want_rc, const char *want_err)
{
    struct envelope env;
    char err[STREAMS_MAX_ERR];
    int rc = parse(stream, e, &env, err);

    cr_expect_eq(rc, want_rc, "rc %d, want %d (err: %s)", rc, want_rc, err);
    cr_expect_str_eq(err, want_rc == 0 ? "untouched" : want_err);
    if (want_rc != 0)
        cr_expect_null(env.data, "no reference on error");
    else
        cr_expect(json_is_object(env.data));
    envelope_release(&env);
    entry_free(e);
}

#define REGISTER "{'name':'Ann','email':'ann@example.com'}"

static void valid_register(struct entry *e)
{
    memset(e, 0, sizeof(*e));
    add(e, ENVELOPE_TYPE, EVENT_USER_REGISTER);
    add(e, ENVELOPE_DATA, REGISTER);
}

Test(streams_envelope, every_field)
{
    struct entry e = {0};
    struct envelope env;
    char err[STREAMS_MAX_ERR];

    add(&e, "v", "1");
    add(&e, "ts", "1700000000123");
    add(&e, "source", "users");
    add(&e, "trace", UB);
    add(&e, "id", UA);
    add(&e, "data", REGISTER);
    add(&e, "type", "user.register");
    cr_assert_eq(parse(STREAM_USERS_COMMANDS, &e, &env, err), 0, "%s", err);
    cr_expect_str_eq(env.type, EVENT_USER_REGISTER);
    cr_expect_str_eq(env.id, UA);
    cr_expect_str_eq(env.trace, UB);
    cr_expect_str_eq(env.source, "users");
    cr_expect_eq(env.ts, 1700000000123LL);
    cr_expect_eq(env.v, 1);
    cr_assert(json_is_object(env.data));
    cr_expect_eq(env.data->refcount, 1, "the envelope owns the only reference");
    cr_expect_str_eq(json_string_value(json_object_get(env.data, "name")), "Ann");
    cr_expect_str_eq(json_string_value(json_object_get(env.data, "email")), "ann@example.com");
    cr_expect_str_eq(err, "untouched");
    envelope_release(&env);
    cr_expect_null(env.data);
    envelope_release(&env); /* twice is fine */
    entry_free(&e);
}

Test(streams_envelope, id_falls_back_to_stream_and_entry_id)
{
    struct entry e;
    struct envelope env;
    char err[STREAMS_MAX_ERR];

    valid_register(&e);
    cr_assert_eq(parse(STREAM_USERS_COMMANDS, &e, &env, err), 0, "%s", err);
    cr_expect_str_eq(env.id, "users.commands:" ENTRY_ID);
    cr_expect_str_eq(env.trace, "");
    cr_expect_str_eq(env.source, "");
    cr_expect_eq(env.ts, 0);
    cr_expect_eq(env.v, 1);
    envelope_release(&env);
    entry_free(&e);
}

Test(streams_envelope, fallback_id_too_long)
{
    char stream[128];
    struct entry e;
    struct envelope env;
    char err[STREAMS_MAX_ERR];

    memset(stream, 's', 112);
    memcpy(stream + 112, ".commands", sizeof(".commands")); /* 121 + ":" + 15 > 127 */
    valid_register(&e);
    cr_expect_eq(parse(stream, &e, &env, err), -EINVAL);
    cr_expect(strncmp(err, "id: sss", 7) == 0, "%s", err);
    cr_expect(strstr(err, "is longer than 127 bytes") != NULL, "%s", err);
    cr_expect_null(env.data);
    entry_free(&e);
}

Test(streams_envelope, missing_type)
{
    struct entry e = {0};

    add(&e, ENVELOPE_DATA, REGISTER);
    add(&e, "typ", EVENT_USER_REGISTER);
    add(&e, "types", EVENT_USER_REGISTER);
    expect_parse(STREAM_USERS_COMMANDS, &e, -EINVAL, "type: required");
    add(&e, ENVELOPE_DATA, REGISTER);
    add(&e, ENVELOPE_TYPE, "");
    expect_parse(STREAM_USERS_COMMANDS, &e, -EINVAL, "type: must not be empty");
}

Test(streams_envelope, missing_data)
{
    struct entry e = {0};

    add(&e, ENVELOPE_TYPE, EVENT_USER_REGISTER);
    add(&e, "Data", REGISTER);
    expect_parse(STREAM_USERS_COMMANDS, &e, -EINVAL, "data: required");
}

static void expect_data_error(const char *data, const char *want_prefix)
{
    struct entry e = {0};
    struct envelope env;
    char err[STREAMS_MAX_ERR];

    add(&e, ENVELOPE_TYPE, EVENT_USER_REGISTER);
    add(&e, ENVELOPE_DATA, data);
    cr_expect_eq(parse(STREAM_USERS_COMMANDS, &e, &env, err), -EINVAL, "%s", data);
    cr_expect(strncmp(err, want_prefix, strlen(want_prefix)) == 0, "%s: got %s", data, err);
    cr_expect_null(env.data);
    entry_free(&e);
}

Test(streams_envelope, data_not_json)
{
    expect_data_error("{'name':", "data: not JSON: ");
    expect_data_error("", "data: not JSON: ");
    expect_data_error("{'name':'Ann','email':'a@b'} x", "data: not JSON: ");
    expect_data_error("{'name':'Ann','email':'a\\u0000@b'}", "data: not JSON: ");
    expect_data_error("{'name':'Ann','name':'Bob','email':'a@b'}", "data: not JSON: duplicate");
}

Test(streams_envelope, data_not_an_object)
{
    expect_data_error("[1]", "data: expected a JSON object");
    expect_data_error("[]", "data: expected a JSON object");
    expect_data_error("5", "data: expected a JSON object");
    expect_data_error("null", "data: expected a JSON object");
    expect_data_error("'x'", "data: expected a JSON object");
}

Test(streams_envelope, error_text_is_printable)
{
    static const char raw[] = "{\"name\":\x01\xff}";
    struct entry e = {0};
    struct envelope env;
    char err[STREAMS_MAX_ERR];

    add(&e, ENVELOPE_TYPE, EVENT_USER_REGISTER);
    add_span(&e, ENVELOPE_DATA, raw, sizeof(raw) - 1);
    cr_expect_eq(parse(STREAM_USERS_COMMANDS, &e, &env, err), -EINVAL);
    cr_expect(strncmp(err, "data: not JSON: ", 16) == 0, "%s", err);
    for (const char *p = err; *p != '\0'; p++)
        cr_expect((unsigned char)*p >= 0x20 && (unsigned char)*p < 0x7f, "byte 0x%02x in %s",
                  (unsigned char)*p, err);
    entry_free(&e);
}

/* A user.register payload padded with spaces to exactly size bytes. */
static char *padded_register(size_t size)
{
    static const char head[] = "{\"name\":\"Ann\",\"email\":\"ann@example.com\"";
    char *s = repeat(' ', size);

    memcpy(s, head, sizeof(head) - 1);
    s[size - 1] = '}';
    return s;
}

Test(streams_envelope, data_size_limit)
{
    char *fits = padded_register(STREAMS_MAX_DATA_BYTES);
    char *over = padded_register(STREAMS_MAX_DATA_BYTES + 1);
    struct entry e = {0};

    add(&e, ENVELOPE_TYPE, EVENT_USER_REGISTER);
    add_span(&e, ENVELOPE_DATA, fits, STREAMS_MAX_DATA_BYTES);
    expect_parse(STREAM_USERS_COMMANDS, &e, 0, NULL);
    add(&e, ENVELOPE_TYPE, EVENT_USER_REGISTER);
    add_span(&e, ENVELOPE_DATA, over, STREAMS_MAX_DATA_BYTES + 1);
    expect_parse(STREAM_USERS_COMMANDS, &e, -EINVAL, "data: larger than 65536 bytes");
    free(fits);
    free(over);
}

static void expect_version(const char *v, int want_rc, const char *want_err)
{
    struct entry e;

    valid_register(&e);
    add(&e, ENVELOPE_V, v);
    expect_parse(STREAM_USERS_COMMANDS, &e, want_rc, want_err);
}

Test(streams_envelope, version)
{
    expect_version("1", 0, NULL);
    expect_version("2", -EINVAL, "v: unsupported version 2");
    expect_version("0", -EINVAL, "v: unsupported version 0");
    expect_version("01", 0, NULL);
    expect_version("", -EINVAL, "v: expected a version number");
    expect_version("one", -EINVAL, "v: expected a version number");
    expect_version("-1", -EINVAL, "v: expected a version number");
    expect_version("1.0", -EINVAL, "v: expected a version number");
    expect_version("99999999999999999999", -EINVAL, "v: expected a version number");
}

Test(streams_envelope, version_is_checked_before_the_rest)
{
    struct entry e = {0};

    add(&e, ENVELOPE_V, "2");
    add(&e, ENVELOPE_DATA, "not json");
    expect_parse(STREAM_USERS_COMMANDS, &e, -EINVAL, "v: unsupported version 2");
}

static void expect_duplicate(const char *name, const char *value, const char *want)
{
    struct entry e;

    valid_register(&e);
    add(&e, "trace", "t");
    add(&e, name, value);
    expect_parse(STREAM_USERS_COMMANDS, &e, -EINVAL, want);
}

Test(streams_envelope, duplicate_field)
{
    expect_duplicate(ENVELOPE_TYPE, EVENT_USER_REGISTER, "type: duplicate field");
    expect_duplicate(ENVELOPE_DATA, REGISTER, "data: duplicate field");
    expect_duplicate(ENVELOPE_TRACE, "t", "trace: duplicate field");
    {
        struct entry e;

        valid_register(&e);
        add(&e, ENVELOPE_ID, UA);
        add(&e, ENVELOPE_ID, UB);
        expect_parse(STREAM_USERS_COMMANDS, &e, -EINVAL, "id: duplicate field");
    }
}

Test(streams_envelope, unknown_fields_are_ignored)
{
    struct entry e;
    struct envelope env;
    char err[STREAMS_MAX_ERR];

    valid_register(&e);
    add(&e, DLQ_ERROR, "data.qty: expected a positive integer");
    add(&e, DLQ_GROUP, "users");
    add(&e, DLQ_DELIVERIES, "1");
    add(&e, "", "");
    cr_expect_eq(parse(STREAM_USERS_COMMANDS, &e, &env, err), 0, "%s", err);
    envelope_release(&env);
    entry_free(&e);
}

static void expect_text_field(const char *name, size_t fits)
{
    char *ok = repeat('i', fits), *over = repeat('i', fits + 1);
    char want[64];
    struct entry e;

    valid_register(&e);
    add(&e, name, ok);
    expect_parse(STREAM_USERS_COMMANDS, &e, 0, NULL);
    valid_register(&e);
    add(&e, name, over);
    snprintf(want, sizeof(want), "%s: longer than %zu bytes", name, fits);
    expect_parse(STREAM_USERS_COMMANDS, &e, -EINVAL, want);
    free(ok);
    free(over);
}

Test(streams_envelope, text_field_limits)
{
    expect_text_field(ENVELOPE_ID, STREAMS_MAX_ID - 1);
    expect_text_field(ENVELOPE_TRACE, STREAMS_MAX_TRACE - 1);
    expect_text_field(ENVELOPE_SOURCE, STREAMS_MAX_SOURCE - 1);
}

Test(streams_envelope, type_too_long)
{
    char *type = repeat('t', STREAMS_MAX_TYPE);
    struct entry e = {0};

    add(&e, ENVELOPE_TYPE, type);
    add(&e, ENVELOPE_DATA, REGISTER);
    expect_parse(STREAM_USERS_COMMANDS, &e, -EINVAL, "type: longer than 63 bytes");
    free(type);
}

Test(streams_envelope, empty_id_and_nul_bytes)
{
    static const char nul_type[] = "user.register\0x";
    struct entry e;

    valid_register(&e);
    add(&e, ENVELOPE_ID, "");
    expect_parse(STREAM_USERS_COMMANDS, &e, -EINVAL, "id: must not be empty");
    memset(&e, 0, sizeof(e));
    add_span(&e, ENVELOPE_TYPE, nul_type, sizeof(nul_type) - 1);
    add(&e, ENVELOPE_DATA, REGISTER);
    expect_parse(STREAM_USERS_COMMANDS, &e, -EINVAL, "type: must not contain a NUL byte");
    valid_register(&e);
    add_span(&e, ENVELOPE_TRACE, "a\0b", 3);
    expect_parse(STREAM_USERS_COMMANDS, &e, -EINVAL, "trace: must not contain a NUL byte");
}

static void expect_ts(const char *ts, int want_rc, long long want)
{
    struct entry e;
    struct envelope env;
    char err[STREAMS_MAX_ERR];

    valid_register(&e);
    add(&e, ENVELOPE_TS, ts);
    cr_expect_eq(parse(STREAM_USERS_COMMANDS, &e, &env, err), want_rc, "ts %s: %s", ts, err);
    if (want_rc == 0)
        cr_expect_eq(env.ts, want, "ts %s", ts);
    else
        cr_expect_str_eq(err, "ts: expected a non-negative integer (ms since the epoch)");
    envelope_release(&env);
    entry_free(&e);
}

Test(streams_envelope, timestamp)
{
    expect_ts("0", 0, 0);
    expect_ts("9223372036854775807", 0, 9223372036854775807LL);
    expect_ts("9223372036854775808", -EINVAL, 0);
    expect_ts("", -EINVAL, 0);
    expect_ts("abc", -EINVAL, 0);
    expect_ts("-1", -EINVAL, 0);
    expect_ts("17e11", -EINVAL, 0);
    expect_ts(" 1", -EINVAL, 0);
}

Test(streams_envelope, unknown_type_is_enoent)
{
    struct entry e = {0};

    add(&e, ENVELOPE_TYPE, EVENT_USER_REGISTERED);
    add(&e, ENVELOPE_DATA, "not even JSON");
    expect_parse(STREAM_USERS_COMMANDS, &e, -ENOENT,
                 "type: unknown type \"user.registered\" for stream users.commands");
    add(&e, ENVELOPE_TYPE, "order.ship");
    add(&e, ENVELOPE_DATA, "{}");
    expect_parse(STREAM_ORDERS_EVENTS, &e, -ENOENT,
                 "type: unknown type \"order.ship\" for stream orders.events");
}

Test(streams_envelope, bad_payload_is_einval_and_keeps_header)
{
    struct entry e = {0};
    struct envelope env;
    char err[STREAMS_MAX_ERR];

    add(&e, ENVELOPE_TYPE, EVENT_PRODUCT_RESTOCK);
    add(&e, ENVELOPE_DATA, "{'sku':'SKU-1','qty':'50'}");
    add(&e, ENVELOPE_TRACE, UA);
    cr_expect_eq(parse(STREAM_INVENTORY_COMMANDS, &e, &env, err), -EINVAL);
    cr_expect_str_eq(err, "data.qty: expected a positive integer");
    cr_expect_null(env.data);
    cr_expect_str_eq(env.type, EVENT_PRODUCT_RESTOCK, "kept for logging");
    cr_expect_str_eq(env.trace, UA, "kept for logging");
    envelope_release(&env);
    entry_free(&e);
}

Test(streams_envelope, spans_are_not_nul_terminated)
{
#define SPAN_JSON "{\"name\":\"Ann\",\"email\":\"a@b\"}"
    static const char buf[] = "typeuser.registerXdata" SPAN_JSON "}}}";
    struct stream_field f[] = {
        {buf, 4, buf + 4, 13},
        {buf + 18, 4, buf + 22, sizeof(SPAN_JSON) - 1},
    };
    struct envelope env;
    char err[STREAMS_MAX_ERR] = "";

    cr_assert_eq(fixture_parse(STREAM_USERS_COMMANDS, "5-1", f, 2, &env, err, sizeof(err)), 0, "%s",
                 err);
    cr_expect_str_eq(env.type, EVENT_USER_REGISTER);
    cr_expect_str_eq(env.id, "users.commands:5-1");
    envelope_release(&env);
}

Test(streams_envelope, every_catalog_type_parses)
{
    for (size_t s = 0; s < ARRAY_SIZE(samples); s++) {
        struct entry e = {0};
        struct envelope env;
        char err[STREAMS_MAX_ERR];

        add(&e, ENVELOPE_TYPE, samples[s].type);
        add(&e, ENVELOPE_DATA, samples[s].json);
        cr_expect_eq(parse(samples[s].stream, &e, &env, err), 0, "%s: %s", samples[s].type, err);
        cr_expect_str_eq(env.type, samples[s].type);
        cr_expect_not_null(env.data);
        envelope_release(&env);
        entry_free(&e);
    }
}

Test(streams_envelope, no_fields_no_error_buffer)
{
    struct envelope env;

    cr_expect_eq(fixture_parse(STREAM_USERS_COMMANDS, ENTRY_ID, NULL, 0, &env, NULL, 0), -EINVAL);
    cr_expect_null(env.data);
    cr_expect_eq(fixture_parse(NULL, ENTRY_ID, NULL, 0, &env, NULL, 0), -EINVAL);
}

/* ---------------------------------------------------------------------------
 * The kinds no reference service uses yet, declarations, descriptions
 * ------------------------------------------------------------------------ */

static const char *const channels[] = {"email", "sms", NULL};
static const struct spec_field tag_item = SPEC_TEXT(NULL, 8);
static const struct spec_field meta_fields[] = {SPEC_BOOL("urgent"), SPEC_END};
static const struct spec_field note_fields[] = {
    SPEC_STRING("body", 20),
    SPEC_ENUM("channel", channels),
    SPEC_BOOL("read", .optional = 1),
    SPEC_INT("priority", -2, 2, .optional = 1),
    SPEC_ARRAY("tags", &tag_item, 0, 3, .optional = 1),
    SPEC_OBJECT("meta", meta_fields, .optional = 1, .open = 1),
    SPEC_END,
};
static const struct stream_type notes[] = {
    {.stream = "notes.events", .type = "note.sent", .fields = note_fields},
    {.stream = NULL},
};

static void note(const char *json, int want_rc, const char *want_err)
{
    char err[STREAMS_MAX_ERR] = "untouched";
    json_t *data = J(json);
    int rc = streams_validate(&notes[0], data, err, sizeof(err));

    cr_expect_eq(rc, want_rc, "%s: rc %d (%s)", json, rc, err);
    cr_expect_str_eq(err, want_rc == 0 ? "untouched" : want_err, "%s", json);
    json_decref(data);
}

Test(streams_kinds, free_text_enum_bool_range_arrays_open_objects)
{
    note("{'body':'hi\\nthere\\t!','channel':'sms'}", 0, NULL);
    note("{'body':'','channel':'email'}", 0, NULL);
    note("{'body':'123456789012345678901','channel':'sms'}", -EINVAL,
         "data.body: must be at most 20 bytes");
    note("{'body':'a\\u0001','channel':'sms'}", -EINVAL,
         "data.body: must not contain control characters");
    note("{'body':'x','channel':'fax'}", -EINVAL, "data.channel: expected one of: email, sms");
    note("{'body':'x','channel':'sms','read':1}", -EINVAL, "data.read: expected true or false");
    note("{'body':'x','channel':'sms','read':false,'priority':-2}", 0, NULL);
    note("{'body':'x','channel':'sms','priority':3}", -EINVAL, "data.priority: must be at most 2");
    note("{'body':'x','channel':'sms','priority':-3}", -EINVAL,
         "data.priority: expected an integer from -2 to 2");
    note("{'body':'x','channel':'sms','tags':[]}", 0, NULL);
    note("{'body':'x','channel':'sms','tags':['a',' b ']}", 0, NULL);
    note("{'body':'x','channel':'sms','tags':['a','b','c','d']}", -EINVAL,
         "data.tags: must have at most 3 items");
    note("{'body':'x','channel':'sms','tags':['a',7]}", -EINVAL, "data.tags[1]: expected a string");
    note("{'body':'x','channel':'sms','tags':'a'}", -EINVAL, "data.tags: expected an array");
    note("{'body':'x','channel':'sms','meta':{'urgent':true,'from':'ops'}}", 0, NULL);
    note("{'body':'x','channel':'sms','meta':{}}", -EINVAL, "data.meta.urgent: required");
    note("{'body':'x','channel':'sms','extra':1}", -EINVAL, "data.extra: unknown field");
}

Test(streams_kinds, declarations_are_checked)
{
    static const struct spec_field no_max[] = {SPEC_STRING("s", 0), SPEC_END};
    static const struct spec_field twice[] = {SPEC_UUID("a"), SPEC_UUID("a"), SPEC_END};
    static const struct spec_field bad_range[] = {SPEC_INT("n", 5, 1), SPEC_END};
    static const struct spec_field no_words[] = {SPEC_ENUM("e", NULL), SPEC_END};
    const struct stream_type cases[][2] = {
        {{.stream = "a.events", .type = "x.y", .fields = no_max}, {.stream = NULL}},
        {{.stream = "a.events", .type = "x.y", .fields = twice}, {.stream = NULL}},
        {{.stream = "a.events", .type = "x.y", .fields = bad_range}, {.stream = NULL}},
        {{.stream = "a.events", .type = "x.y", .fields = no_words}, {.stream = NULL}},
        {{.stream = "a.events", .type = "Bad", .fields = twice + 2}, {.stream = NULL}},
        {{.stream = "events", .type = "x.y", .fields = twice + 2}, {.stream = NULL}},
        {{.stream = "a.events", .type = "x.y", .fields = NULL}, {.stream = NULL}},
    };
    const struct stream_type dup[] = {
        {.stream = "a.events", .type = "x.y", .fields = twice + 2},
        {.stream = "a.events", .type = "x.y", .fields = twice + 2},
        {.stream = NULL},
    };
    char err[256];

    for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
        err[0] = '\0';
        cr_expect_eq(streams_check_list(cases[i], err, sizeof(err)), -EINVAL, "case %zu", i);
        cr_expect_neq(err[0], '\0', "case %zu says why", i);
    }
    cr_expect_eq(streams_check_list(dup, err, sizeof(err)), -EINVAL);
    cr_expect(strstr(err, "declared twice") != NULL, "%s", err);
    cr_expect_eq(streams_check_list(notes, err, sizeof(err)), 0, "%s", err);
    cr_expect_eq(streams_check_list(catalog_fixture, err, sizeof(err)), 0, "%s", err);
    cr_expect_eq(streams_check_list(NULL, err, sizeof(err)), 0);
}

Test(streams_kinds, descriptions)
{
    char buf[160];

    streams_describe(&note_fields[1], buf, sizeof(buf));
    cr_expect_str_eq(buf, "one of email, sms");
    streams_describe(&note_fields[3], buf, sizeof(buf));
    cr_expect_str_eq(buf, "integer -2..2");
    streams_describe(&note_fields[4], buf, sizeof(buf));
    cr_expect_str_eq(buf, "[text, 1..8 bytes trimmed] 0..3");
    streams_describe(&note_fields[5], buf, sizeof(buf));
    cr_expect_str_eq(buf, "object {urgent}");
    cr_expect_eq(streams_find(notes, "notes.events", "note.sent"), &notes[0]);
    cr_expect_null(streams_find(notes, "notes.events", "note.read"));
    cr_expect_null(streams_find(NULL, "notes.events", "note.sent"));
}
