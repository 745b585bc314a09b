/* input.c -- the orders service's input rules. See input.h.
 *
 * Every problem found is recorded (a client fixes all of them at once), but
 * an array past ORDERS_MAX_ITEMS is refused without looking at its
 * elements. Field names are built with snprintf into bounded buffers; keys
 * from the request are cut at a UTF-8 character boundary before they are
 * echoed back. */
#include "input.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include <jansson.h>

#define FIELD_MAX (ORDERS_MAX_KEY + 32) /* "items[99].<key>", cut key included */
/* STREAMS_MAX_QTY as text, for the 422 message: the same number as the limit. */
#define QTY_TEXT(n) #n
#define QTY_MAX_TEXT_OF(n) QTY_TEXT(n)
#define QTY_MAX_TEXT QTY_MAX_TEXT_OF(STREAMS_MAX_QTY)

/* Copies key into buf (len bytes), cut at a character boundary with "..."
 * when it does not fit in ORDERS_MAX_KEY bytes. */
static const char *cut_key(const char *key, char *buf, size_t len)
{
    size_t n = strlen(key);

    if (n <= ORDERS_MAX_KEY || len < ORDERS_MAX_KEY + 4)
        return key;
    n = ORDERS_MAX_KEY;
    while (n > 0 && ((unsigned char)key[n] & 0xc0) == 0x80)
        n--; /* key[n] continues a character: cut before its lead byte */
    snprintf(buf, len, "%.*s...", (int)n, key); /* fits: len > ORDERS_MAX_KEY + 3 */
    return buf;
}

int orders_input_problem(json_t *fields, const char *key, const char *msg)
{
    char cut[ORDERS_MAX_KEY + 4];

    /* ENOMEM loses only the message: callers count problems by return. */
    json_object_set_new(fields, cut_key(key, cut, sizeof(cut)), json_string(msg));
    return -EINVAL;
}

/* Records "items[i].<name>": msg. */
static int item_problem(json_t *fields, size_t i, const char *name, const char *msg)
{
    char cut[ORDERS_MAX_KEY + 4], field[FIELD_MAX];
    int n = snprintf(field, sizeof(field), "items[%zu].%s", i, cut_key(name, cut, sizeof(cut)));

    if (n < 0 || (size_t)n >= sizeof(field))
        snprintf(field, sizeof(field), "items[%zu]", i); /* cannot happen: name is cut */
    return orders_input_problem(fields, field, msg);
}

static int sku_ok(const char *s, size_t len)
{
    if (len == 0 || len > ORDERS_MAX_SKU)
        return 0;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];

        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-'))
            return 0;
    }
    return 1;
}

/* Checks the sku of item i; returns it (borrowed) or NULL after recording
 * the problem. */
static const char *item_sku(const json_t *item, size_t i, json_t *fields)
{
    const json_t *v = json_object_get(item, "sku");

    if (v == NULL || json_is_null(v)) {
        item_problem(fields, i, "sku", "is required");
        return NULL;
    }
    if (!json_is_string(v)) {
        item_problem(fields, i, "sku", "must be a string");
        return NULL;
    }
    if (!sku_ok(json_string_value(v), json_string_length(v))) {
        item_problem(fields, i, "sku", "must be 1 to 64 letters, digits, '.', '_' or '-'");
        return NULL;
    }
    return json_string_value(v);
}

/* Checks the qty of item i; returns it, or 0 after recording the problem. */
static json_int_t item_qty(const json_t *item, size_t i, json_t *fields)
{
    const json_t *v = json_object_get(item, "qty");
    json_int_t qty;

    if (v == NULL || json_is_null(v)) {
        item_problem(fields, i, "qty", "is required");
        return 0;
    }
    qty = json_is_integer(v) ? json_integer_value(v) : 0;
    if (qty < 1 || qty > STREAMS_MAX_QTY) {
        item_problem(fields, i, "qty", "must be an integer from 1 to " QTY_MAX_TEXT);
        return 0;
    }
    return qty;
}

/* The index of an earlier item (before i) with the same valid sku, or i. */
static size_t first_with_sku(const json_t *items, size_t i, const char *sku)
{
    for (size_t j = 0; j < i; j++) {
        const char *other = json_string_value(json_object_get(json_array_get(items, j), "sku"));

        if (other != NULL && sku_ok(other, strlen(other)) && strcmp(other, sku) == 0)
            return j;
    }
    return i;
}

/* Records each key of item i other than sku and qty. Returns how many. */
static int unknown_keys(json_t *item, size_t i, json_t *fields)
{
    const char *key;
    json_t *v;
    int bad = 0;

    json_object_foreach(item, key, v)
    {
        if (strcmp(key, "sku") != 0 && strcmp(key, "qty") != 0)
            bad += item_problem(fields, i, key, "unknown field") < 0;
    }
    return bad;
}

/* Checks item i and appends its canonical form to canon. Returns 0,
 * -EINVAL (recorded in fields) or -ENOMEM. */
static int check_item(const json_t *items, size_t i, json_t *fields, json_t *canon)
{
    json_t *item = json_array_get(items, i); /* borrowed */
    const char *sku;
    char msg[48];
    json_int_t qty;
    size_t dup;
    int bad = 0;

    if (!json_is_object(item)) {
        snprintf(msg, sizeof(msg), "items[%zu]", i);
        return orders_input_problem(fields, msg, "must be an object {sku, qty}");
    }
    bad += unknown_keys(item, i, fields);
    sku = item_sku(item, i, fields);
    qty = item_qty(item, i, fields);
    if (sku != NULL && (dup = first_with_sku(items, i, sku)) < i) {
        snprintf(msg, sizeof(msg), "duplicates items[%zu].sku", dup);
        bad += item_problem(fields, i, "sku", msg) < 0;
    }
    if (bad > 0 || sku == NULL || qty == 0)
        return -EINVAL;
    return json_array_append_new(canon, json_pack("{s:s, s:I}", "sku", sku, "qty", qty)) < 0
               ? -ENOMEM
               : 0;
}

int orders_input_items(const json_t *items, json_t *fields, json_t **canon)
{
    size_t n = json_array_size(items);
    int rc = 0;

    if (items == NULL || json_is_null(items))
        return orders_input_problem(fields, "items", "is required");
    if (!json_is_array(items))
        return orders_input_problem(fields, "items", "must be an array of {sku, qty}");
    if (n == 0)
        return orders_input_problem(fields, "items", "must not be empty");
    if (n > ORDERS_MAX_ITEMS)
        return orders_input_problem(fields, "items", "must have at most 100 items");
    *canon = json_array();
    if (*canon == NULL)
        return -ENOMEM;
    for (size_t i = 0; i < n; i++) {
        int r = check_item(items, i, fields, *canon);

        if (r < 0 && rc != -ENOMEM)
            rc = r;
    }
    if (rc < 0) {
        json_decref(*canon);
        *canon = NULL;
    }
    return rc;
}
