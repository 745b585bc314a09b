/* catalog.c -- payload specs: validation of a declared type's data, the
 * checks of a module's declarations, and their one-line descriptions. See
 * streams.h for the rules.
 *
 * Nothing here knows a stream or a type: the modules declare them
 * (struct stream_type), and this file walks what it is given. Validation
 * stops at the first problem and writes one message that names its path.
 * It only reads the JSON it is given (borrowed) and allocates only to name
 * an unknown key, on the error path. */
#include <ripple/streams.h>

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include <jansson.h>

#include <ripple/ids.h>

static size_t describe_keys(const struct spec_field *fields, char *buf, size_t len);

/* ---------------------------------------------------------------------------
 * Lookups
 * ------------------------------------------------------------------------ */

const struct stream_type *streams_find(const struct stream_type *list, const char *stream,
                                       const char *type)
{
    if (list == NULL || stream == NULL || type == NULL)
        return NULL;
    for (; list->stream != NULL; list++) {
        if (strcmp(list->type, type) == 0 && strcmp(list->stream, stream) == 0)
            return list;
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

/* Where a value is: the root ("data"), then .key and [index] steps, each
 * on the stack of the check that took it. It is written out only when a
 * message names it: a valid payload costs no formatting at all. */
struct vpath {
    const struct vpath *up; /* NULL at the root */
    const char *key;        /* len bytes; NULL for an array index */
    size_t len, index;
};

/* A path being written into PATH_MAX_LEN bytes; past them it is cut. */
struct pathbuf {
    char *p;
    size_t len;
    int cut;
};

static void path_put(struct pathbuf *b, const char *s)
{
    size_t n = strlen(s);

    if (b->len + n >= PATH_MAX_LEN) {
        b->cut = 1;
        n = PATH_MAX_LEN - 1 - b->len;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void path_steps(const struct vpath *path, struct pathbuf *b)
{
    char part[SHOWN_MAX + 8];

    if (path->up != NULL)
        path_steps(path->up, b);
    if (path->key == NULL) {
        snprintf(part, sizeof(part), "[%zu]", path->index);
    } else {
        part[0] = '.';
        show(part + 1, path->key, path->len);
    }
    path_put(b, path->up == NULL ? part + 1 : part);
}

/* Writes path into out (PATH_MAX_LEN bytes), keys shown printable. The
 * parts are the catalog's own names, an index below STREAMS_MAX_ITEMS and
 * keys cut by show(), so it always fits; were it cut, it would end in "..."
 * and only the message would be shorter. */
static void path_format(const struct vpath *path, char *out)
{
    struct pathbuf b = {out, 0, 0};

    out[0] = '\0';
    path_steps(path, &b);
    if (b.cut)
        memcpy(out + PATH_MAX_LEN - 4, "...", 4);
}

/* Writes "<path>: <message>" and returns -EINVAL. A message longer than the
 * buffer is cut: it is for people, and the rc carries the meaning. */
static int fail(const struct vctx *c, const struct vpath *path, const char *fmt, ...)
    CORE_PRINTF(3, 4);

static int fail(const struct vctx *c, const struct vpath *path, const char *fmt, ...)
{
    char where[PATH_MAX_LEN];
    int n;

    if (c->err == NULL || c->errlen == 0)
        return -EINVAL;
    path_format(path, where);
    n = snprintf(c->err, c->errlen, "%s: ", where);
    if (n >= 0 && (size_t)n < c->errlen) {
        va_list ap;

        va_start(ap, fmt);
        vsnprintf(c->err + n, c->errlen - (size_t)n, fmt, ap);
        va_end(ap);
    }
    return -EINVAL;
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

static int token_ok(const char *s, size_t len, long long max)
{
    if (len == 0 || (long long)len > max)
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

static int check_email(const char *s, size_t len, long long max, const struct vpath *path,
                       const struct vctx *c)
{
    trim(&s, &len);
    if ((long long)len > max)
        return fail(c, path, "must be at most %lld bytes", max);
    if (!email_ok(s, len))
        return fail(c, path, "expected an email address like name@example.com");
    return 0;
}

static int check_text(const char *s, size_t len, long long max, const struct vpath *path,
                      const struct vctx *c)
{
    trim(&s, &len);
    if (len == 0)
        return fail(c, path, "must not be empty");
    if ((long long)len > max)
        return fail(c, path, "must be at most %lld bytes", max);
    for (size_t i = 0; i < len; i++) {
        if (is_control((unsigned char)s[i]))
            return fail(c, path, "must not contain control characters");
    }
    return 0;
}

static int check_free(const char *s, size_t len, long long max, const struct vpath *path,
                      const struct vctx *c)
{
    if ((long long)len > max)
        return fail(c, path, "must be at most %lld bytes", max);
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)s[i];

        if (is_control(ch) && ch != '\t' && ch != '\n')
            return fail(c, path, "must not contain control characters");
    }
    return 0;
}

static int check_enum(const char *s, size_t len, const char *const *words, const struct vpath *path,
                      const struct vctx *c)
{
    char list[160];
    size_t pos = 0;

    for (const char *const *w = words; w != NULL && *w != NULL; w++) {
        if (strlen(*w) == len && memcmp(*w, s, len) == 0)
            return 0;
        if (pos < sizeof(list))
            pos += (size_t)snprintf(list + pos, sizeof(list) - pos, "%s%s", pos ? ", " : "", *w);
    }
    return fail(c, path, "expected one of: %s", pos ? list : "(none)");
}

/* The string kinds: v is known to be present. */
static int check_string(const json_t *v, const struct spec_field *f, const struct vpath *path,
                        const struct vctx *c)
{
    const char *s = json_string_value(v);
    size_t len = json_string_length(v);

    if (s == NULL)
        return fail(c, path, "expected a string");
    switch (f->kind) {
    case SPEC_K_UUID:
        return ids_is_uuid(s, len) ? 0 : fail(c, path, "expected a UUID (8-4-4-4-12 hex digits)");
    case SPEC_K_TOKEN:
        return token_ok(s, len, f->max)
                   ? 0
                   : fail(c, path, "expected 1-%lld of A-Z a-z 0-9 . _ -", f->max);
    case SPEC_K_WORD:
        return reason_ok(s, len) ? 0
                                 : fail(c, path, "expected a snake_case word like out_of_stock");
    case SPEC_K_ENUM:
        return check_enum(s, len, f->words, path, c);
    case SPEC_K_TEXT:
        return check_text(s, len, f->max, path, c);
    case SPEC_K_EMAIL:
        return check_email(s, len, f->max, path, c);
    default:
        return check_free(s, len, f->max, path, c);
    }
}

static int check_int(const json_t *v, json_int_t min, json_int_t max, const struct vpath *path,
                     const struct vctx *c)
{
    /* json_is_integer is false for "3", 1.5, 1.0 and true alike. */
    if (min > 0 && (!json_is_integer(v) || json_integer_value(v) < min))
        return fail(c, path, "expected a positive integer");
    if (min == 0 && (!json_is_integer(v) || json_integer_value(v) < 0))
        return fail(c, path, "expected a non-negative integer");
    if (!json_is_integer(v) || json_integer_value(v) < min)
        return fail(c, path,
                    "expected an integer from %" JSON_INTEGER_FORMAT " to %" JSON_INTEGER_FORMAT,
                    min, max);
    if (json_integer_value(v) > max)
        return fail(c, path, "must be at most %" JSON_INTEGER_FORMAT, max);
    return 0;
}

static int check_value(const json_t *v, const struct spec_field *f, const struct vpath *path,
                       const struct vctx *c);

/* Item i repeats item j's f->unique: the path is made only now. */
static int fail_duplicate(const json_t *si, const struct spec_field *f, const struct vpath *path,
                          size_t i, size_t j, const struct vctx *c)
{
    struct vpath item = {path, NULL, 0, i};
    struct vpath key = {&item, f->unique, strlen(f->unique), 0};

    if (json_is_string(si))
        return fail(c, &key, "duplicate %s \"%s\" (also %s[%zu])", f->unique, json_string_value(si),
                    f->name ? f->name : "items", j);
    return fail(c, &key, "duplicate %s (also [%zu])", f->unique, j);
}

/* No two object items with the same value of f->unique. */
static int check_unique(const json_t *v, const struct spec_field *f, const struct vpath *path,
                        const struct vctx *c)
{
    size_t n = json_array_size(v);

    for (size_t i = 1; i < n; i++) {
        const json_t *si = json_object_get(json_array_get(v, i), f->unique);

        for (size_t j = 0; si != NULL && j < i; j++) {
            if (json_equal(si, json_object_get(json_array_get(v, j), f->unique)))
                return fail_duplicate(si, f, path, i, j, c);
        }
    }
    return 0;
}

/* Each item is checked whole before the next, then the unique field. */
static int check_array(const json_t *v, const struct spec_field *f, const struct vpath *path,
                       const struct vctx *c)
{
    size_t n = json_array_size(v);

    if (!json_is_array(v) && f->item->kind == SPEC_K_OBJECT) {
        char keys[128];

        describe_keys(f->item->fields, keys, sizeof(keys));
        return fail(c, path, "expected an array of %s", keys);
    }
    if (!json_is_array(v))
        return fail(c, path, "expected an array");
    if (n == 0 && f->min > 0)
        return fail(c, path, "must not be empty");
    if ((long long)n < f->min)
        return fail(c, path, "must have at least %lld items", f->min);
    if ((long long)n > f->max)
        return fail(c, path, "must have at most %lld items", f->max);
    for (size_t i = 0; i < n; i++) {
        struct vpath item = {path, NULL, 0, i};
        int rc = check_value(json_array_get(v, i), f->item, &item, c);

        if (rc != 0)
            return rc;
    }
    return f->unique != NULL ? check_unique(v, f, path, c) : 0;
}

static int check_object(const json_t *obj, const struct spec_field *fields, int open,
                        const struct vpath *path, const struct vctx *c);

static int check_value(const json_t *v, const struct spec_field *f, const struct vpath *path,
                       const struct vctx *c)
{
    switch (f->kind) {
    case SPEC_K_INT:
        return check_int(v, f->min, f->max, path, c);
    case SPEC_K_BOOL:
        return json_is_boolean(v) ? 0 : fail(c, path, "expected true or false");
    case SPEC_K_ARRAY:
        return check_array(v, f, path, c);
    case SPEC_K_OBJECT:
        return check_object(v, f->fields, f->open, path, c);
    default:
        return check_string(v, f, path, c);
    }
}

/* ---------------------------------------------------------------------------
 * Objects
 * ------------------------------------------------------------------------ */

static int spec_has(const struct spec_field *fields, const char *key, size_t len)
{
    for (const struct spec_field *f = fields; f->name != NULL; f++) {
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
static int fail_unknown(const json_t *obj, const struct spec_field *fields,
                        const struct vpath *path, const struct vctx *c)
{
    json_t *copy = json_deep_copy(obj);
    const char *key;
    size_t len;
    json_t *v;
    int rc;

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
    {
        struct vpath at = {path, key, len, 0};

        rc = fail(c, &at, "unknown field"); /* before the copy, which owns key, goes */
    }
    json_decref(copy);
    return rc;
}

static int check_object(const json_t *obj, const struct spec_field *fields, int open,
                        const struct vpath *path, const struct vctx *c)
{
    size_t known = 0;
    int rc;

    if (!json_is_object(obj))
        return fail(c, path, "expected a JSON object");
    for (const struct spec_field *f = fields; f->name != NULL; f++)
        known += json_object_get(obj, f->name) != NULL;
    /* Unknown keys first: for a typo, "data.skuu: unknown field" says more
     * than "data.sku: required". */
    if (!open && json_object_size(obj) > known)
        return fail_unknown(obj, fields, path, c);
    for (const struct spec_field *f = fields; f->name != NULL; f++) {
        const json_t *v = json_object_get(obj, f->name);
        struct vpath at = {path, f->name, strlen(f->name), 0};

        if (v == NULL) {
            if (f->optional)
                continue;
            return fail(c, &at, "required");
        }
        rc = check_value(v, f, &at, c);
        if (rc != 0)
            return rc;
    }
    return 0;
}

int streams_unknown_type(const char *stream, const char *type, char *err, size_t errlen)
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

/* err is written through c (a vctx), which clang-tidy does not follow */
int streams_validate(const struct stream_type *t, const json_t *data,
                     char *err, /* NOLINT(readability-non-const-parameter) */
                     size_t errlen)
{
    struct vctx c = {err, errlen};
    struct vpath root = {NULL, ENVELOPE_DATA, strlen(ENVELOPE_DATA), 0};

    return check_object(data, t->fields, 0, &root, &c);
}

/* ---------------------------------------------------------------------------
 * Checking declarations (at start) and describing them (the catalog)
 * ------------------------------------------------------------------------ */

/* [a-z][a-z0-9_-]*( . [a-z][a-z0-9_-]* )+: "order.placed", "users.events". */
static int dotted_ok(const char *s)
{
    int parts = 0, at_start = 1;

    if (s == NULL || *s == '\0' || strlen(s) >= STREAMS_MAX_TYPE)
        return 0;
    for (; *s; s++) {
        if (at_start && (*s < 'a' || *s > 'z'))
            return 0;
        if (*s == '.') {
            at_start = 1;
            continue;
        }
        if (at_start)
            parts++;
        at_start = 0;
        if (!((*s >= 'a' && *s <= 'z') || (*s >= '0' && *s <= '9') || *s == '_' || *s == '-'))
            return 0;
    }
    return !at_start && parts >= 2;
}

static int check_spec(const struct spec_field *f, const char *where, char *err, size_t errlen,
                      int depth);

static int check_fields(const struct spec_field *fields, const char *where, char *err,
                        size_t errlen, int depth)
{
    if (fields == NULL)
        return snprintf(err, errlen, "%s: no field list (end it with SPEC_END)", where), -EINVAL;
    for (const struct spec_field *f = fields; f->name != NULL; f++) {
        for (const struct spec_field *g = fields; g != f; g++) {
            if (strcmp(g->name, f->name) == 0)
                return snprintf(err, errlen, "%s: field %s twice", where, f->name), -EINVAL;
        }
        if (check_spec(f, where, err, errlen, depth) < 0)
            return -EINVAL;
    }
    return 0;
}

static int check_spec(const struct spec_field *f, const char *where, char *err, size_t errlen,
                      int depth)
{
    const char *name = f->name ? f->name : "(item)";

    if (depth > 8)
        return snprintf(err, errlen, "%s: specs nested too deep", where), -EINVAL;
    switch (f->kind) {
    case SPEC_K_STRING:
    case SPEC_K_TEXT:
    case SPEC_K_EMAIL:
    case SPEC_K_TOKEN:
        if (f->max <= 0)
            return snprintf(err, errlen, "%s: %s needs a maximum length", where, name), -EINVAL;
        return 0;
    case SPEC_K_ENUM:
        if (f->words == NULL || f->words[0] == NULL)
            return snprintf(err, errlen, "%s: %s has no words", where, name), -EINVAL;
        return 0;
    case SPEC_K_INT:
    case SPEC_K_ARRAY:
        if (f->min > f->max || (f->kind == SPEC_K_ARRAY && (f->item == NULL || f->min < 0)))
            return snprintf(err, errlen, "%s: %s has no valid range or item", where, name), -EINVAL;
        return f->kind == SPEC_K_ARRAY ? check_spec(f->item, where, err, errlen, depth + 1) : 0;
    case SPEC_K_OBJECT:
        return check_fields(f->fields, where, err, errlen, depth + 1);
    case SPEC_K_UUID:
    case SPEC_K_WORD:
    case SPEC_K_BOOL:
        return 0;
    }
    return snprintf(err, errlen, "%s: %s has an unknown kind", where, name), -EINVAL;
}

int streams_check_list(const struct stream_type *list, char *err, size_t errlen)
{
    char where[160];

    for (const struct stream_type *t = list; t != NULL && t->stream != NULL; t++) {
        snprintf(where, sizeof(where), "%s %s", t->stream, t->type ? t->type : "(no type)");
        if (!dotted_ok(t->stream) || !dotted_ok(t->type))
            return snprintf(err, errlen,
                            "%s: stream and type must be dotted lower-case words, like "
                            "orders.events and order.placed",
                            where),
                   -EINVAL;
        for (const struct stream_type *u = list; u != t; u++) {
            if (strcmp(u->stream, t->stream) == 0 && strcmp(u->type, t->type) == 0)
                return snprintf(err, errlen, "%s: declared twice", where), -EINVAL;
        }
        if (check_fields(t->fields, where, err, errlen, 0) < 0)
            return -EINVAL;
    }
    return 0;
}

/* "{a, b?}" of an object's fields, cut to len. */
static size_t describe_keys(const struct spec_field *fields, char *buf, size_t len)
{
    size_t pos = 0;

    pos += (size_t)snprintf(buf, len, "{");
    for (const struct spec_field *f = fields; f != NULL && f->name != NULL && pos < len; f++)
        pos += (size_t)snprintf(buf + pos, len - pos, "%s%s%s", f == fields ? "" : ", ", f->name,
                                f->optional ? "?" : "");
    if (pos < len)
        pos += (size_t)snprintf(buf + pos, len - pos, "}");
    return pos < len ? pos : len - 1;
}

size_t streams_describe(const struct spec_field *f, char *buf, size_t len)
{
    char inner[128];
    int n;

    switch (f->kind) {
    case SPEC_K_STRING:
        n = snprintf(buf, len, "string, at most %lld bytes", f->max);
        break;
    case SPEC_K_TEXT:
        n = snprintf(buf, len, "text, 1..%lld bytes trimmed", f->max);
        break;
    case SPEC_K_EMAIL:
        n = snprintf(buf, len, "email address");
        break;
    case SPEC_K_TOKEN:
        n = snprintf(buf, len, "1..%lld of A-Z a-z 0-9 . _ -", f->max);
        break;
    case SPEC_K_WORD:
        n = snprintf(buf, len, "snake_case word");
        break;
    case SPEC_K_ENUM:
        n = snprintf(buf, len, "one of %s%s%s", f->words[0], f->words[1] ? ", " : "",
                     f->words[1] ? f->words[1] : "");
        for (size_t i = 2; f->words[i] != NULL && n >= 0 && (size_t)n < len; i++)
            n += snprintf(buf + n, len - (size_t)n, ", %s", f->words[i]);
        break;
    case SPEC_K_UUID:
        n = snprintf(buf, len, "uuid");
        break;
    case SPEC_K_INT:
        n = snprintf(buf, len, "integer %lld..%lld", f->min, f->max);
        break;
    case SPEC_K_BOOL:
        n = snprintf(buf, len, "boolean");
        break;
    case SPEC_K_OBJECT:
        describe_keys(f->fields, inner, sizeof(inner));
        n = snprintf(buf, len, "object %s", inner);
        break;
    default:
        if (f->item->kind == SPEC_K_OBJECT)
            describe_keys(f->item->fields, inner, sizeof(inner));
        else
            streams_describe(f->item, inner, sizeof(inner));
        n = snprintf(buf, len, "[%s] %lld..%lld%s%s%s", inner, f->min, f->max,
                     f->unique ? ", " : "", f->unique ? f->unique : "", f->unique ? " unique" : "");
        break;
    }
    return n < 0 ? 0 : (size_t)n < len ? (size_t)n : len - 1;
}
