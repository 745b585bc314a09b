/* catalog.c -- the stream catalog of DESIGN.md §5 and payload validation.
 * See streams.h for the rules.
 *
 * The catalog is one static table: for each (stream, type), the fields of its
 * data with their kind and whether they are optional. streams_validate walks
 * it; nothing else in the project spells a field's rule. Validation stops at
 * the first problem and writes one message that names its path. It only reads
 * the JSON it is given (borrowed) and allocates only to name an unknown key,
 * on the error path. */
#include <ripple/streams.h>

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include <jansson.h>

#include <ripple/ids.h>

enum kind {
    K_UUID,   /* canonical 8-4-4-4-12 hex, any case */
    K_NAME,   /* trimmed, 1..STREAMS_MAX_NAME bytes, no control characters */
    K_EMAIL,  /* trimmed, one '@', at most STREAMS_MAX_EMAIL bytes */
    K_SKU,    /* [A-Za-z0-9._-]{1,64} */
    K_QTY,    /* 1..STREAMS_MAX_QTY */
    K_CENTS,  /* 1..STREAMS_MAX_INTEGER: amounts and prices */
    K_LEVEL,  /* 0..STREAMS_MAX_INTEGER: balances and stock levels */
    K_REASON, /* [a-z][a-z0-9_]{0,63} */
    K_ITEMS,  /* [{sku, qty}], 1..STREAMS_MAX_ITEMS, skus distinct */
};

struct field_spec {
    const char *name; /* NULL ends a list */
    enum kind kind;
    int optional;
};

#define MAX_FIELDS 4

struct type_spec {
    const char *stream;
    const char *type;
    struct field_spec fields[MAX_FIELDS + 1]; /* the unused tail is {NULL} */
};

#define REQ(n, k)                                                                                  \
    {                                                                                              \
        n, k, 0                                                                                    \
    }
#define OPT(n, k)                                                                                  \
    {                                                                                              \
        n, k, 1                                                                                    \
    }

static const struct type_spec catalog[] = {
    {STREAM_USERS_COMMANDS, EVENT_USER_REGISTER, {REQ("name", K_NAME), REQ("email", K_EMAIL)}},
    {STREAM_USERS_EVENTS,
     EVENT_USER_REGISTERED,
     {REQ("user_id", K_UUID), REQ("name", K_NAME), REQ("email", K_EMAIL)}},
    {STREAM_ORDERS_COMMANDS, EVENT_ORDER_PLACE, {REQ("user_id", K_UUID), REQ("items", K_ITEMS)}},
    {STREAM_ORDERS_EVENTS,
     EVENT_ORDER_PLACED,
     {REQ("order_id", K_UUID), REQ("user_id", K_UUID), REQ("items", K_ITEMS)}},
    {STREAM_ORDERS_EVENTS,
     EVENT_ORDER_CONFIRMED,
     {REQ("order_id", K_UUID), REQ("user_id", K_UUID), REQ("amount_cents", K_CENTS)}},
    {STREAM_ORDERS_EVENTS,
     EVENT_ORDER_REJECTED,
     {REQ("order_id", K_UUID), REQ("user_id", K_UUID), REQ("reason", K_REASON)}},
    {STREAM_ORDERS_EVENTS,
     EVENT_ORDER_CANCELLED,
     {REQ("order_id", K_UUID), REQ("user_id", K_UUID), REQ("reason", K_REASON)}},
    {STREAM_INVENTORY_COMMANDS,
     EVENT_STOCK_RESERVE,
     {REQ("order_id", K_UUID), REQ("items", K_ITEMS)}},
    {STREAM_INVENTORY_COMMANDS, EVENT_STOCK_RELEASE, {REQ("order_id", K_UUID)}},
    {STREAM_INVENTORY_COMMANDS, EVENT_STOCK_COMMIT, {REQ("order_id", K_UUID)}},
    {STREAM_INVENTORY_COMMANDS,
     EVENT_PRODUCT_RESTOCK,
     {REQ("sku", K_SKU), REQ("qty", K_QTY), OPT("name", K_NAME), OPT("price_cents", K_CENTS)}},
    {STREAM_INVENTORY_EVENTS,
     EVENT_STOCK_RESERVED,
     {REQ("order_id", K_UUID), REQ("amount_cents", K_CENTS)}},
    {STREAM_INVENTORY_EVENTS,
     EVENT_STOCK_REJECTED,
     {REQ("order_id", K_UUID), REQ("reason", K_REASON)}},
    {STREAM_INVENTORY_EVENTS, EVENT_STOCK_RELEASED, {REQ("order_id", K_UUID)}},
    {STREAM_INVENTORY_EVENTS, EVENT_STOCK_COMMITTED, {REQ("order_id", K_UUID)}},
    {STREAM_INVENTORY_EVENTS,
     EVENT_PRODUCT_RESTOCKED,
     {REQ("sku", K_SKU), REQ("qty", K_QTY), REQ("available", K_LEVEL)}},
    {STREAM_PAYMENTS_COMMANDS,
     EVENT_PAYMENT_CHARGE,
     {REQ("order_id", K_UUID), REQ("user_id", K_UUID), REQ("amount_cents", K_CENTS)}},
    {STREAM_PAYMENTS_COMMANDS, EVENT_PAYMENT_REFUND, {REQ("order_id", K_UUID)}},
    {STREAM_PAYMENTS_COMMANDS,
     EVENT_ACCOUNT_CREDIT,
     {REQ("user_id", K_UUID), REQ("amount_cents", K_CENTS)}},
    {STREAM_PAYMENTS_EVENTS,
     EVENT_ACCOUNT_OPENED,
     {REQ("user_id", K_UUID), REQ("balance_cents", K_LEVEL)}},
    {STREAM_PAYMENTS_EVENTS,
     EVENT_ACCOUNT_CREDITED,
     {REQ("user_id", K_UUID), REQ("amount_cents", K_CENTS), REQ("balance_cents", K_LEVEL)}},
    {STREAM_PAYMENTS_EVENTS,
     EVENT_PAYMENT_SUCCEEDED,
     {REQ("order_id", K_UUID), REQ("user_id", K_UUID), REQ("amount_cents", K_CENTS)}},
    {STREAM_PAYMENTS_EVENTS,
     EVENT_PAYMENT_REFUNDED,
     {REQ("order_id", K_UUID), REQ("user_id", K_UUID), REQ("amount_cents", K_CENTS)}},
    {STREAM_PAYMENTS_EVENTS,
     EVENT_PAYMENT_FAILED,
     {REQ("order_id", K_UUID), REQ("user_id", K_UUID), REQ("reason", K_REASON)}},
};

static const struct field_spec item_fields[] = {REQ("sku", K_SKU), REQ("qty", K_QTY), {NULL, 0, 0}};

/* ---------------------------------------------------------------------------
 * Lookups
 * ------------------------------------------------------------------------ */

static const struct type_spec *find_spec(const char *stream, const char *type)
{
    if (stream == NULL || type == NULL)
        return NULL;
    for (size_t i = 0; i < ARRAY_SIZE(catalog); i++) {
        if (strcmp(catalog[i].type, type) == 0 && strcmp(catalog[i].stream, stream) == 0)
            return &catalog[i];
    }
    return NULL;
}

int streams_is_commands(const char *stream)
{
    static const char suffix[] = ".commands";
    size_t len;

    if (stream == NULL)
        return 0;
    len = strlen(stream);
    return len >= sizeof(suffix) - 1 &&
           memcmp(stream + len - (sizeof(suffix) - 1), suffix, sizeof(suffix) - 1) == 0;
}

int streams_known_type(const char *stream, const char *type)
{
    return find_spec(stream, type) != NULL;
}

int streams_catalog_entry(size_t i, const char **stream, const char **type)
{
    if (i >= ARRAY_SIZE(catalog))
        return -ENOENT;
    *stream = catalog[i].stream;
    *type = catalog[i].type;
    return 0;
}

/* ---------------------------------------------------------------------------
 * Messages
 * ------------------------------------------------------------------------ */

/* Where messages go; err may be NULL or errlen 0 (then nothing is written). */
struct vctx {
    char *err;
    size_t errlen;
};

#define PATH_MAX_LEN 128 /* "data.items[99].<key of at most 64 bytes>..." fits */
#define SHOWN_MAX 64     /* bytes of an entry's text quoted in a message */

/* Copies len bytes of s into dst (SHOWN_MAX + 4 bytes) as printable ASCII,
 * '?' for any other byte, cut with "..." past SHOWN_MAX. */
static void show(char *dst, const char *s, size_t len)
{
    size_t i;

    for (i = 0; i < len && i < SHOWN_MAX; i++) {
        unsigned char c = (unsigned char)s[i];

        dst[i] = s[i];
        if (c < 0x20 || c >= 0x7f)
            dst[i] = '?';
    }
    if (i < len)
        memcpy(dst + i, "...", 4);
    else
        dst[i] = '\0';
}

/* Writes "<path>: <message>" and returns -EINVAL. A message longer than the
 * buffer is cut: it is for people, and the rc carries the meaning. */
static int fail(const struct vctx *c, const char *path, const char *fmt, ...) CORE_PRINTF(3, 4);

static int fail(const struct vctx *c, const char *path, const char *fmt, ...)
{
    int n;

    if (c->err == NULL || c->errlen == 0)
        return -EINVAL;
    n = snprintf(c->err, c->errlen, "%s: ", path);
    if (n >= 0 && (size_t)n < c->errlen) {
        va_list ap;

        va_start(ap, fmt);
        vsnprintf(c->err + n, c->errlen - (size_t)n, fmt, ap);
        va_end(ap);
    }
    return -EINVAL;
}

/* Formats a path into path (PATH_MAX_LEN bytes). The parts are the
 * catalog's own names, an index below STREAMS_MAX_ITEMS and keys cut by
 * show(), so it always fits; were it cut, it would end in "..." and only the
 * message would be shorter. */
static void path_printf(char *path, const char *fmt, ...) CORE_PRINTF(2, 3);

static void path_printf(char *path, const char *fmt, ...)
{
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(path, PATH_MAX_LEN, fmt, ap);
    va_end(ap);
    if (n < 0)
        path[0] = '\0';
    else if ((size_t)n >= PATH_MAX_LEN)
        memcpy(path + PATH_MAX_LEN - 4, "...", 4);
}

/* Writes "<parent>.<name>" into path, name (len bytes) shown printable. */
static void join_path(char *path, const char *parent, const char *name, size_t len)
{
    char shown[SHOWN_MAX + 4];

    show(shown, name, len);
    path_printf(path, "%s.%s", parent, shown);
}

/* ---------------------------------------------------------------------------
 * Field kinds
 * ------------------------------------------------------------------------ */

static int is_space(unsigned char c)
{
    return c == ' ' || (c >= '\t' && c <= '\r');
}

static int is_control(unsigned char c)
{
    return c < 0x20 || c == 0x7f;
}

/* Narrows (*s, *len) to drop leading and trailing ASCII white space. */
static void trim(const char **s, size_t *len)
{
    while (*len > 0 && is_space((unsigned char)**s)) {
        (*s)++;
        (*len)--;
    }
    while (*len > 0 && is_space((unsigned char)(*s)[*len - 1]))
        (*len)--;
}

static int sku_ok(const char *s, size_t len)
{
    if (len == 0 || len > STREAMS_MAX_SKU)
        return 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];

        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-'))
            return 0;
    }
    return 1;
}

static int reason_ok(const char *s, size_t len)
{
    if (len == 0 || len > STREAMS_MAX_REASON || s[0] < 'a' || s[0] > 'z')
        return 0;
    for (size_t i = 1; i < len; i++) {
        char c = s[i];

        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_'))
            return 0;
    }
    return 1;
}

static int email_ok(const char *s, size_t len)
{
    const char *at = memchr(s, '@', len);
    size_t ats = 0;

    if (at == NULL || at == s || at == s + len - 1)
        return 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];

        if (is_space(c) || is_control(c))
            return 0;
        ats += c == '@';
    }
    return ats == 1;
}

static int check_name(const char *s, size_t len, const char *path, const struct vctx *c)
{
    trim(&s, &len);
    if (len == 0)
        return fail(c, path, "must not be empty");
    if (len > STREAMS_MAX_NAME)
        return fail(c, path, "must be at most %d bytes", STREAMS_MAX_NAME);
    for (size_t i = 0; i < len; i++) {
        if (is_control((unsigned char)s[i]))
            return fail(c, path, "must not contain control characters");
    }
    return 0;
}

static int check_email(const char *s, size_t len, const char *path, const struct vctx *c)
{
    trim(&s, &len);
    if (len > STREAMS_MAX_EMAIL)
        return fail(c, path, "must be at most %d bytes", STREAMS_MAX_EMAIL);
    if (!email_ok(s, len))
        return fail(c, path, "expected an email address like name@example.com");
    return 0;
}

/* The string kinds: v is known to be present. */
static int check_string(const json_t *v, enum kind k, const char *path, const struct vctx *c)
{
    const char *s = json_string_value(v);
    size_t len = json_string_length(v);

    if (s == NULL)
        return fail(c, path, "expected a string");
    switch (k) {
    case K_UUID:
        return ids_is_uuid(s, len) ? 0 : fail(c, path, "expected a UUID (8-4-4-4-12 hex digits)");
    case K_SKU:
        return sku_ok(s, len) ? 0 : fail(c, path, "expected 1-64 of A-Z a-z 0-9 . _ -");
    case K_REASON:
        return reason_ok(s, len) ? 0
                                 : fail(c, path, "expected a snake_case word like out_of_stock");
    case K_NAME:
        return check_name(s, len, path, c);
    default:
        return check_email(s, len, path, c);
    }
}

static int check_int(const json_t *v, json_int_t min, json_int_t max, const char *path,
                     const struct vctx *c)
{
    const char *want = min > 0 ? "a positive integer" : "a non-negative integer";

    /* json_is_integer is false for "3", 1.5, 1.0 and true alike. */
    if (!json_is_integer(v) || json_integer_value(v) < min)
        return fail(c, path, "expected %s", want);
    if (json_integer_value(v) > max)
        return fail(c, path, "must be at most %" JSON_INTEGER_FORMAT, max);
    return 0;
}

static int check_object(const json_t *obj, const struct field_spec *fields, const char *path,
                        const struct vctx *c);

/* Each item is checked whole before the next, then the skus for repeats. */
static int check_items(const json_t *v, const char *path, const struct vctx *c)
{
    char ipath[PATH_MAX_LEN];
    size_t n = json_array_size(v);

    if (!json_is_array(v))
        return fail(c, path, "expected an array of {sku, qty}");
    if (n == 0)
        return fail(c, path, "must not be empty");
    if (n > STREAMS_MAX_ITEMS)
        return fail(c, path, "must have at most %d items", STREAMS_MAX_ITEMS);
    for (size_t i = 0; i < n; i++) {
        int rc;

        path_printf(ipath, "%s[%zu]", path, i);
        rc = check_object(json_array_get(v, i), item_fields, ipath, c);
        if (rc != 0)
            return rc;
    }
    for (size_t i = 1; i < n; i++) {
        const json_t *si = json_object_get(json_array_get(v, i), "sku");

        for (size_t j = 0; j < i; j++) {
            if (!json_equal(si, json_object_get(json_array_get(v, j), "sku")))
                continue;
            path_printf(ipath, "%s[%zu].sku", path, i);
            return fail(c, ipath, "duplicate sku \"%s\" (also items[%zu])", json_string_value(si),
                        j);
        }
    }
    return 0;
}

static int check_value(const json_t *v, enum kind k, const char *path, const struct vctx *c)
{
    switch (k) {
    case K_QTY:
        return check_int(v, 1, STREAMS_MAX_QTY, path, c);
    case K_CENTS:
        return check_int(v, 1, STREAMS_MAX_INTEGER, path, c);
    case K_LEVEL:
        return check_int(v, 0, STREAMS_MAX_INTEGER, path, c);
    case K_ITEMS:
        return check_items(v, path, c);
    default:
        return check_string(v, k, path, c);
    }
}

/* ---------------------------------------------------------------------------
 * Objects
 * ------------------------------------------------------------------------ */

static int spec_has(const struct field_spec *fields, const char *key, size_t len)
{
    for (const struct field_spec *f = fields; f->name != NULL; f++) {
        if (strlen(f->name) == len && memcmp(f->name, key, len) == 0)
            return 1;
    }
    return 0;
}

/* obj has a key that fields do not list: names the first one. jansson's
 * iterators take a non-const object, so this walks a copy; it runs only on
 * the error path. Should the copy lose the key (out of memory, or a key with
 * a NUL byte, which jansson's parser refuses but json_object_setn allows and
 * json_deep_copy cuts), the message is less precise but the data is still
 * rejected: the caller counted the key by its full length. */
static int fail_unknown(const json_t *obj, const struct field_spec *fields, const char *path,
                        const struct vctx *c)
{
    json_t *copy = json_deep_copy(obj);
    char kpath[PATH_MAX_LEN];
    const char *key;
    size_t len;
    json_t *v;

    if (copy == NULL)
        return fail(c, path, "has an unknown field");
    json_object_keylen_foreach(copy, key, len, v)
    {
        if (!spec_has(fields, key, len))
            break;
    }
    if (key == NULL) {
        json_decref(copy);
        return fail(c, path, "has an unknown field");
    }
    join_path(kpath, path, key, len);
    json_decref(copy);
    return fail(c, kpath, "unknown field");
}

static int check_object(const json_t *obj, const struct field_spec *fields, const char *path,
                        const struct vctx *c)
{
    char fpath[PATH_MAX_LEN];
    size_t known = 0;
    int rc;

    if (!json_is_object(obj))
        return fail(c, path, "expected a JSON object");
    for (const struct field_spec *f = fields; f->name != NULL; f++)
        known += json_object_get(obj, f->name) != NULL;
    /* Unknown keys first: for a typo, "data.skuu: unknown field" says more
     * than "data.sku: required". */
    if (json_object_size(obj) > known)
        return fail_unknown(obj, fields, path, c);
    for (const struct field_spec *f = fields; f->name != NULL; f++) {
        const json_t *v = json_object_get(obj, f->name);

        join_path(fpath, path, f->name, strlen(f->name));
        if (v == NULL) {
            if (f->optional)
                continue;
            return fail(c, fpath, "required");
        }
        rc = check_value(v, f->kind, fpath, c);
        if (rc != 0)
            return rc;
    }
    return 0;
}

/* Writes the -ENOENT message, cut like fail()'s, and returns -ENOENT. */
static int fail_type(const char *stream, const char *type, char *err, size_t errlen)
{
    char shown_stream[SHOWN_MAX + 4], shown_type[SHOWN_MAX + 4];

    if (err == NULL || errlen == 0)
        return -ENOENT;
    stream = stream != NULL ? stream : "";
    type = type != NULL ? type : "";
    show(shown_stream, stream, strlen(stream));
    show(shown_type, type, strlen(type));
    snprintf(err, errlen, ENVELOPE_TYPE ": unknown type \"%s\" for stream %s", shown_type,
             shown_stream);
    return -ENOENT;
}

int streams_validate(const char *stream, const char *type, const json_t *data, char *err,
                     size_t errlen)
{
    const struct type_spec *spec = find_spec(stream, type);
    struct vctx c = {err, errlen};

    if (spec == NULL)
        return fail_type(stream, type, err, errlen);
    return check_object(data, spec->fields, ENVELOPE_DATA, &c);
}
