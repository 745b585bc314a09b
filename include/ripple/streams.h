/* streams.h -- the envelope of a stream entry, and the machinery of payload
 * specs every module declares its streams with (DESIGN.md §5, §12).
 *
 * The catalog is open: no list of streams or types lives here. Each module
 * declares, in its own directory, the types it emits and the types it
 * consumes (struct stream_type: stream, type, the fields of its payload),
 * and hands the lists to the host in its descriptor (core/module.h). The
 * outbox refuses a type its module did not declare; a consumer validates
 * each entry against its module's declaration of that type. On a
 * *.commands stream an undeclared type is malformed (dead-lettered); on a
 * *.events stream it is skipped (acked): a consumer acts only on what it
 * declares.
 *
 * A stream entry (an "envelope") carries the fields type, data, id, trace,
 * source, ts and v; envelope_parse turns the raw fields of one entry into a
 * struct envelope. Dead letters go to "<stream>.dlq" (streams_dlq_name) with
 * the original fields plus error, group, deliveries and failures.
 *
 * Payload specs (struct spec_field, written with the SPEC_* macros). A field
 * present must be valid; an optional one may be absent, never null. Kinds:
 *   SPEC_STRING   a string of at most max bytes, no control characters but
 *                 tab and newline (free text)
 *   SPEC_TEXT     trimmed of ASCII white space: 1..max bytes, no control
 *                 characters (a name)
 *   SPEC_EMAIL    trimmed, at most max bytes, one '@' with text on both
 *                 sides, no white space (a light check)
 *   SPEC_TOKEN    1..max of A-Z a-z 0-9 . _ - (a sku)
 *   SPEC_WORD     a snake_case word, [a-z][a-z0-9_]{0,63} (a reason)
 *   SPEC_ENUM     one of a NULL-terminated list of words
 *   SPEC_UUID     a canonical 8-4-4-4-12 UUID, any case
 *   SPEC_INT      a JSON integer (not a string, real or boolean) in [min, max]
 *   SPEC_BOOL     true or false
 *   SPEC_OBJECT   an object with its own fields
 *   SPEC_ARRAY    min..max items, each matching item; .unique names a field
 *                 of object items no two items may share
 * An unknown key is rejected ("data.foo: unknown field"), so that a
 * producer's typo is caught at the first consumer, unless the object is
 * declared open. Business rules (an unknown sku needs a price, an email
 * already taken) are the modules' to check, not the spec's.
 *
 * Error messages name the path and what is expected, e.g.
 * "data.items[2].qty: expected a positive integer". They are always
 * NUL-terminated printable ASCII (bytes from the entry outside 0x20-0x7e show
 * as '?'), cut to the caller's buffer, and safe to log or to store as a dead
 * letter's error. STREAMS_MAX_ERR bytes hold any of them whole.
 *
 * No state, no threads; jansson is used for JSON. */
#ifndef RIPPLE_STREAMS_H
#define RIPPLE_STREAMS_H

#include <stddef.h>

#include <ripple/common.h>

struct json_t;

/* Envelope fields of a stream entry. */
#define ENVELOPE_TYPE "type"               /* required: the declared type */
#define ENVELOPE_DATA "data"               /* required, a JSON object: the payload */
#define ENVELOPE_ID "id"                   /* event UUID, the de-duplication key */
#define ENVELOPE_TRACE "trace"             /* correlation id (the order id within a saga) */
#define ENVELOPE_TRACEPARENT "traceparent" /* W3C trace context (ripple/trace.h) */
#define ENVELOPE_SOURCE "source"           /* emitting service */
#define ENVELOPE_TS "ts"                   /* commit time, ms since the epoch */
#define ENVELOPE_V "v"                     /* schema version, STREAMS_ENVELOPE_VERSION */

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

/* ---------------------------------------------------------------------------
 * Payload specs
 * ------------------------------------------------------------------------- */

enum spec_kind {
    SPEC_K_STRING,
    SPEC_K_TEXT,
    SPEC_K_EMAIL,
    SPEC_K_TOKEN,
    SPEC_K_WORD,
    SPEC_K_ENUM,
    SPEC_K_UUID,
    SPEC_K_INT,
    SPEC_K_BOOL,
    SPEC_K_OBJECT,
    SPEC_K_ARRAY,
};

/* One field of a payload (or, in an ARRAY's .item, the spec of each item,
 * whose name is not used). A list of fields ends with SPEC_END. */
struct spec_field {
    const char *name;
    enum spec_kind kind;
    int optional;                    /* may be absent (never null) */
    long long min, max;              /* INT: the range; ARRAY: items; strings: max bytes */
    const char *const *words;        /* ENUM: NULL-terminated */
    const struct spec_field *fields; /* OBJECT: its fields, SPEC_END-terminated */
    const struct spec_field *item;   /* ARRAY: each item */
    const char *unique;              /* ARRAY of objects: a field no two items share */
    int open;                        /* OBJECT: unknown keys allowed */
};

/* Field constructors; extra designators may follow, e.g.
 * SPEC_TEXT("name", 100, .optional = 1). */
#define SPEC_STRING(n, maxb, ...)                                                                  \
    {                                                                                              \
        .name = (n), .kind = SPEC_K_STRING, .max = (maxb), __VA_ARGS__                             \
    }
#define SPEC_TEXT(n, maxb, ...)                                                                    \
    {                                                                                              \
        .name = (n), .kind = SPEC_K_TEXT, .max = (maxb), __VA_ARGS__                               \
    }
#define SPEC_EMAIL(n, ...)                                                                         \
    {                                                                                              \
        .name = (n), .kind = SPEC_K_EMAIL, .max = STREAMS_MAX_EMAIL, __VA_ARGS__                   \
    }
#define SPEC_TOKEN(n, maxb, ...)                                                                   \
    {                                                                                              \
        .name = (n), .kind = SPEC_K_TOKEN, .max = (maxb), __VA_ARGS__                              \
    }
#define SPEC_WORD(n, ...)                                                                          \
    {                                                                                              \
        .name = (n), .kind = SPEC_K_WORD, .max = STREAMS_MAX_REASON, __VA_ARGS__                   \
    }
#define SPEC_ENUM(n, w, ...)                                                                       \
    {                                                                                              \
        .name = (n), .kind = SPEC_K_ENUM, .words = (w), __VA_ARGS__                                \
    }
#define SPEC_UUID(n, ...)                                                                          \
    {                                                                                              \
        .name = (n), .kind = SPEC_K_UUID, __VA_ARGS__                                              \
    }
#define SPEC_INT(n, lo, hi, ...)                                                                   \
    {                                                                                              \
        .name = (n), .kind = SPEC_K_INT, .min = (lo), .max = (hi), __VA_ARGS__                     \
    }
#define SPEC_POSITIVE(n, hi, ...) SPEC_INT(n, 1, hi, __VA_ARGS__)
#define SPEC_BOOL(n, ...)                                                                          \
    {                                                                                              \
        .name = (n), .kind = SPEC_K_BOOL, __VA_ARGS__                                              \
    }
#define SPEC_OBJECT(n, f, ...)                                                                     \
    {                                                                                              \
        .name = (n), .kind = SPEC_K_OBJECT, .fields = (f), __VA_ARGS__                             \
    }
#define SPEC_ARRAY(n, it, lo, hi, ...)                                                             \
    {                                                                                              \
        .name = (n), .kind = SPEC_K_ARRAY, .item = (it), .min = (lo), .max = (hi), __VA_ARGS__     \
    }
#define SPEC_END                                                                                   \
    {                                                                                              \
        .name = NULL                                                                               \
    }

struct stream_msg;
/* A consumed type's handler (core/stream_consumer.h says what it returns). */
typedef int (*stream_handler_cb)(struct stream_msg *msg, void *data);

/* A declared type: its stream, its name and its payload. In a list of them
 * (a module's emits or consumes), the entry with stream NULL ends it. */
struct stream_type {
    const char *stream;              /* "<module>.commands" or "<module>.events" */
    const char *type;                /* "order.placed": lower-case words and dots */
    const struct spec_field *fields; /* the payload's fields, SPEC_END-terminated */
    stream_handler_cb handler;       /* consumed types: what handles it */
    const char *summary;             /* one line for the generated catalog; may be NULL */
};

/* The declaration of type on stream in list (NULL-terminated by stream;
 * list may be NULL), or NULL. */
const struct stream_type *streams_find(const struct stream_type *list, const char *stream,
                                       const char *type);

/* Checks data (borrowed, may be NULL) against t's payload. Returns 0, or
 * -EINVAL when data is not an object or breaks the spec (err: "data:
 * expected a JSON object", "data.items[2].sku: required", "data.foo: unknown
 * field", ...). err (errlen bytes, may be NULL) is written only on error. */
CORE_MUST_CHECK int streams_validate(const struct stream_type *t, const struct json_t *data,
                                     char *err, size_t errlen);

/* Writes the message for a type that list does not declare on stream
 * ("type: unknown type \"x.y\" for stream users.commands") and returns
 * -ENOENT. */
int streams_unknown_type(const char *stream, const char *type, char *err, size_t errlen);

/* Checks a list of declarations: names well-formed, every type once, specs
 * sound (a max for strings, a range, items for arrays...). Returns 0 or
 * -EINVAL with the first problem in err. A host checks every module's at
 * start. */
CORE_MUST_CHECK int streams_check_list(const struct stream_type *list, char *err, size_t errlen);

/* One line describing f's kind and bounds for the generated catalog, e.g.
 * "uuid", "integer 1..1000000", "[{sku, qty}] 1..100, sku unique". Returns
 * the length written (cut to len). */
size_t streams_describe(const struct spec_field *f, char *buf, size_t len);

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
    char traceparent[56];            /* "" if absent or not a valid traceparent */
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
 * replayed dead letter's error, group, deliveries and failures). Then, when
 * types (a module's declarations, NULL-terminated) is not NULL: a type it
 * does not declare on stream is reported before data is even parsed
 * (-ENOENT), and data is checked against the declared spec (*decl, when
 * not NULL, is set to the declaration). With types NULL, data is parsed,
 * not checked.
 *
 * Returns 0 with out filled (release it with envelope_release); -EINVAL
 * when the entry is malformed or its payload breaks its spec; or -ENOENT
 * when types does not declare its type. err (errlen bytes, may be NULL)
 * says why, e.g. "type: required", "data: not JSON: ...", "data.qty: expected
 * a positive integer". On error out->data is NULL (out holds no references)
 * and the strings hold what was parsed before the error, for logging.
 * stream and entry_id are NUL-terminated; fields may be NULL if nfields is 0. */
CORE_MUST_CHECK int envelope_parse(const char *stream, const char *entry_id,
                                   const struct stream_field *fields, size_t nfields,
                                   const struct stream_type *types, const struct stream_type **decl,
                                   struct envelope *out, char *err, size_t errlen);

/* Drops e's reference to data and sets it to NULL. Safe to call twice, and on
 * an envelope that envelope_parse failed to fill. */
void envelope_release(struct envelope *e);

/* Writes "<stream>.dlq" into buf (len bytes). Returns 0; -EINVAL for an empty
 * or NULL stream; or -ENAMETOOLONG if it does not fit (buf then holds ""). */
CORE_MUST_CHECK int streams_dlq_name(const char *stream, char *buf, size_t len);

#endif
