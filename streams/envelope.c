/* envelope.c -- one raw stream entry to a struct envelope, and DLQ names.
 * See streams.h.
 *
 * The fields arrive as borrowed (pointer, length) spans, so nothing here
 * assumes a NUL terminator: every span is bounded, checked for NUL bytes and
 * copied into the envelope's fixed buffers. data is parsed by jansson with
 * duplicate keys rejected, after its size is checked; the consumer checks it
 * against its module's declaration of the type. On any error the envelope holds no
 * reference, so a consumer can dead-letter the entry and move on. */
#include <ripple/streams.h>

#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include <jansson.h>

#include <ripple/trace.h>

enum env_field { F_TYPE, F_DATA, F_ID, F_TRACE, F_SOURCE, F_TS, F_V, F_TRACEPARENT, F_COUNT };

static const char *const field_names[F_COUNT] = {
    [F_TYPE] = ENVELOPE_TYPE,     [F_DATA] = ENVELOPE_DATA,
    [F_ID] = ENVELOPE_ID,         [F_TRACE] = ENVELOPE_TRACE,
    [F_SOURCE] = ENVELOPE_SOURCE, [F_TS] = ENVELOPE_TS,
    [F_V] = ENVELOPE_V,           [F_TRACEPARENT] = ENVELOPE_TRACEPARENT,
};

/* A borrowed value; p is never NULL once set. */
struct span {
    const char *p;
    size_t len;
    int set;
};

/* Writes the message into err and returns -EINVAL. Bytes outside printable
 * ASCII (from jansson's "near '...'" quotes of the input) become '?', so the
 * message is safe to log and to store; a long one is cut to errlen. */
static int fail(char *err, size_t errlen, const char *fmt, ...) CORE_PRINTF(3, 4);

static int fail(char *err, size_t errlen, const char *fmt, ...)
{
    if (err != NULL && errlen > 0) {
        va_list ap;

        va_start(ap, fmt);
        if (vsnprintf(err, errlen, fmt, ap) < 0)
            err[0] = '\0';
        va_end(ap);
        for (char *s = err; *s != '\0'; s++) {
            if ((unsigned char)*s < 0x20 || (unsigned char)*s >= 0x7f)
                *s = '?';
        }
    }
    return -EINVAL;
}

/* Sorts the entry's fields into spans by name; a known name twice is an
 * error, other names are ignored. */
static int collect(const struct stream_field *fields, size_t nfields, struct span *spans, char *err,
                   size_t errlen)
{
    for (size_t i = 0; i < nfields; i++) {
        const struct stream_field *f = &fields[i];

        for (int k = 0; k < F_COUNT; k++) {
            if (f->name_len != strlen(field_names[k]) ||
                memcmp(f->name, field_names[k], f->name_len) != 0)
                continue;
            if (spans[k].set)
                return fail(err, errlen, "%s: duplicate field", field_names[k]);
            spans[k].p = f->value != NULL ? f->value : "";
            spans[k].len = f->value != NULL ? f->value_len : 0;
            spans[k].set = 1;
            break;
        }
    }
    return 0;
}

/* Copies span s into dst (cap bytes) NUL-terminated. */
static int copy_text(const struct span *s, enum env_field k, char *dst, size_t cap, char *err,
                     size_t errlen)
{
    if (memchr(s->p, '\0', s->len) != NULL)
        return fail(err, errlen, "%s: must not contain a NUL byte", field_names[k]);
    if (s->len >= cap)
        return fail(err, errlen, "%s: longer than %zu bytes", field_names[k], cap - 1);
    memcpy(dst, s->p, s->len);
    dst[s->len] = '\0';
    return 0;
}

/* Parses a span of decimal digits (no sign, no spaces) into *out. */
static int parse_digits(const struct span *s, long long *out)
{
    long long v = 0;

    if (s->len == 0)
        return -EINVAL;
    for (size_t i = 0; i < s->len; i++) {
        int d = s->p[i] - '0';

        if (d < 0 || d > 9 || v > (LLONG_MAX - d) / 10)
            return -EINVAL;
        v = v * 10 + d;
    }
    *out = v;
    return 0;
}

/* v first: a later version may shape the other fields differently. */
static int parse_version(const struct span *f, struct envelope *out, char *err, size_t errlen)
{
    long long v;

    if (!f[F_V].set)
        return 0;
    if (parse_digits(&f[F_V], &v) != 0)
        return fail(err, errlen, "v: expected a version number");
    if (v != STREAMS_ENVELOPE_VERSION)
        return fail(err, errlen, "v: unsupported version %lld", v);
    out->v = (int)v;
    return 0;
}

/* The event id, or "<stream>:<entry_id>" for a hand-injected entry. */
static int parse_id(const struct span *f, const char *stream, const char *entry_id,
                    struct envelope *out, char *err, size_t errlen)
{
    int n;

    if (f[F_ID].set) {
        /* An empty id would make every such entry a duplicate of the first. */
        if (f[F_ID].len == 0)
            return fail(err, errlen, "id: must not be empty");
        return copy_text(&f[F_ID], F_ID, out->id, sizeof(out->id), err, errlen);
    }
    n = snprintf(out->id, sizeof(out->id), "%s:%s", stream, entry_id);
    if (n < 0 || (size_t)n >= sizeof(out->id)) {
        out->id[0] = '\0';
        return fail(err, errlen, "id: %s:%s is longer than %zu bytes", stream, entry_id,
                    sizeof(out->id) - 1);
    }
    return 0;
}

/* type, then that data is there at all: the two fields every entry needs. */
static int parse_type(const struct span *f, struct envelope *out, char *err, size_t errlen)
{
    int rc;

    if (!f[F_TYPE].set)
        return fail(err, errlen, "type: required");
    if (f[F_TYPE].len == 0)
        return fail(err, errlen, "type: must not be empty");
    rc = copy_text(&f[F_TYPE], F_TYPE, out->type, sizeof(out->type), err, errlen);
    if (rc != 0)
        return rc;
    if (!f[F_DATA].set)
        return fail(err, errlen, "data: required");
    return 0;
}

/* Everything but data, in the order of the checks' importance. */
static int parse_header(const struct span *f, const char *stream, const char *entry_id,
                        struct envelope *out, char *err, size_t errlen)
{
    int rc = parse_version(f, out, err, errlen);

    if (rc == 0)
        rc = parse_type(f, out, err, errlen);
    if (rc == 0)
        rc = parse_id(f, stream, entry_id, out, err, errlen);
    if (rc == 0 && f[F_TRACE].set)
        rc = copy_text(&f[F_TRACE], F_TRACE, out->trace, sizeof(out->trace), err, errlen);
    if (rc == 0 && f[F_SOURCE].set)
        rc = copy_text(&f[F_SOURCE], F_SOURCE, out->source, sizeof(out->source), err, errlen);
    /* an invalid trace context is no fault of the entry: a new trace starts */
    if (rc == 0 && f[F_TRACEPARENT].set &&
        trace_parse(f[F_TRACEPARENT].p, f[F_TRACEPARENT].len, out->traceparent) < 0)
        out->traceparent[0] = '\0';
    if (rc == 0 && f[F_TS].set && parse_digits(&f[F_TS], &out->ts) != 0)
        rc = fail(err, errlen, "ts: expected a non-negative integer (ms since the epoch)");
    return rc;
}

/* Parses data into a new reference in *out: a JSON object, size checked
 * first so that a huge value is never handed to the parser. */
static int load_data(const struct span *s, json_t **out, char *err, size_t errlen)
{
    json_error_t je;
    json_t *v;

    if (s->len > STREAMS_MAX_DATA_BYTES)
        return fail(err, errlen, "data: larger than %d bytes", STREAMS_MAX_DATA_BYTES);
    /* JSON_DECODE_ANY so that "5" is "not an object", not "not JSON". */
    v = json_loadb(s->p, s->len, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &je);
    if (v == NULL)
        return fail(err, errlen, "data: not JSON: %s (at byte %d)", je.text, je.position);
    if (!json_is_object(v)) {
        json_decref(v);
        return fail(err, errlen, "data: expected a JSON object");
    }
    *out = v;
    return 0;
}

int envelope_parse(const char *stream, const char *entry_id, const struct stream_field *fields,
                   size_t nfields, const struct stream_type *types, const struct stream_type **decl,
                   struct envelope *out, char *err, size_t errlen)
{
    const struct stream_type *t = NULL;
    struct span spans[F_COUNT] = {{NULL, 0, 0}};
    json_t *data = NULL;
    int rc;

    memset(out, 0, sizeof(*out));
    out->v = STREAMS_ENVELOPE_VERSION;
    if (stream == NULL || entry_id == NULL)
        return fail(err, errlen, "envelope: no stream or entry id given");
    rc = collect(fields, nfields, spans, err, errlen);
    if (rc == 0)
        rc = parse_header(spans, stream, entry_id, out, err, errlen);
    if (rc != 0)
        return rc;
    /* An undeclared type is reported as such before its data is even
     * parsed: on an events stream the consumer skips it, whatever it holds. */
    if (types != NULL && (t = streams_find(types, stream, out->type)) == NULL)
        return streams_unknown_type(stream, out->type, err, errlen);
    rc = load_data(&spans[F_DATA], &data, err, errlen);
    if (rc == 0 && t != NULL)
        rc = streams_validate(t, data, err, errlen);
    if (rc != 0) {
        json_decref(data);
        return rc;
    }
    if (decl != NULL)
        *decl = t;
    out->data = data;
    return 0;
}

void envelope_release(struct envelope *e)
{
    json_decref(e->data);
    e->data = NULL;
}

int streams_dlq_name(const char *stream, char *buf, size_t len)
{
    int n;

    if (len > 0)
        buf[0] = '\0';
    if (stream == NULL || stream[0] == '\0')
        return -EINVAL;
    n = snprintf(buf, len, "%s%s", stream, STREAMS_DLQ_SUFFIX);
    if (n < 0 || (size_t)n >= len) {
        if (len > 0)
            buf[0] = '\0';
        return -ENAMETOOLONG;
    }
    return 0;
}
