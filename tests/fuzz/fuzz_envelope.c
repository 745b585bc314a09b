/* fuzz_envelope.c -- libFuzzer target: stream entries and payloads through
 * streams/ (envelope_parse, streams_validate).
 *
 * Every input is used twice:
 *  1. as the raw fields of one stream entry: split on '\n' into name, value,
 *     name, value, ... (NUL bytes stay inside; at most MAX_FIELDS pairs; an
 *     odd last piece is the entry id, else "1700000000000-0"). Each piece
 *     is its own exact-size heap copy, so reading past a span is an ASan
 *     report. envelope_parse runs for each of the eight streams, with error
 *     buffers of several sizes (none, 1 byte, ..., STREAMS_MAX_ERR).
 *  2. as JSON (jansson, duplicate keys rejected, any value): streams_validate
 *     against every type of the catalog.
 * The entry id also goes through streams_dlq_name and streams_is_commands
 * as a stream name.
 *
 * Checks (streams.h): results are 0, -EINVAL or -ENOENT (validate: 0 or
 * -EINVAL for a catalog type); an error message is NUL-terminated printable
 * ASCII within the buffer, and whole in STREAMS_MAX_ERR bytes when the entry
 * id is a real one; on error the envelope holds no data; on success data is
 * an object with no more keys than the spec lists, the strings are
 * NUL-terminated inside their buffers, the type is in the catalog for that
 * stream, v is 1, and the data validates again. envelope_release is run
 * twice on every envelope (it must be safe). */
#include "fuzz.h"

#include <errno.h>
#include <string.h>

#include <jansson.h>

#include <ripple/streams.h>

#include "tests/common/catalog_fixture.h"

#define MAX_FIELDS 16
#define MAX_SPEC_FIELDS 4     /* catalog.c: no type lists more */
#define REDIS_MAX_ENTRY_ID 41 /* "18446744073709551615-18446744073709551615" */
#define DEFAULT_ENTRY_ID "1700000000000-0"

static const char *const streams[] = {
    STREAM_USERS_COMMANDS,    STREAM_USERS_EVENTS,       STREAM_ORDERS_COMMANDS,
    STREAM_ORDERS_EVENTS,     STREAM_INVENTORY_COMMANDS, STREAM_INVENTORY_EVENTS,
    STREAM_PAYMENTS_COMMANDS, STREAM_PAYMENTS_EVENTS,
};

/* Error buffer sizes to try; 0 passes err = NULL. */
static const size_t err_sizes[] = {STREAMS_MAX_ERR, 0, 1, 8, 40, STREAMS_MAX_ERR - 1, 100, 512};

struct pieces {
    struct stream_field fields[MAX_FIELDS];
    size_t nfields;
    char *entry_id; /* new, NUL-terminated; NULL: DEFAULT_ENTRY_ID */
    char *copies[2 * MAX_FIELDS + 1];
    size_t ncopies;
};

static char *copy_piece(struct pieces *p, const uint8_t *s, size_t len)
{
    char *c = malloc(len > 0 ? len : 1);

    FUZZ_CHECK(c != NULL);
    memcpy(c, s, len);
    p->copies[p->ncopies++] = c;
    return c;
}

/* Splits data on '\n' into at most 2 * MAX_FIELDS + 1 pieces; the last
 * piece keeps any further newlines. */
static void split(struct pieces *p, const uint8_t *data, size_t size)
{
    const char *piece[2 * MAX_FIELDS + 1];
    size_t len[2 * MAX_FIELDS + 1], n = 0, off = 0;

    memset(p, 0, sizeof(*p));
    while (n < ARRAY_SIZE(piece)) {
        const uint8_t *nl = memchr(data + off, '\n', size - off);
        size_t end = nl && n + 1 < ARRAY_SIZE(piece) ? (size_t)(nl - data) : size;

        piece[n] = copy_piece(p, data + off, end - off);
        len[n++] = end - off;
        if (end == size)
            break;
        off = end + 1;
    }
    for (size_t i = 0; i + 1 < n; i += 2) {
        struct stream_field *f = &p->fields[p->nfields++];

        f->name = piece[i];
        f->name_len = len[i];
        f->value = piece[i + 1];
        f->value_len = len[i + 1];
    }
    if (n % 2 == 1) {
        p->entry_id = malloc(len[n - 1] + 1);
        FUZZ_CHECK(p->entry_id != NULL);
        memcpy(p->entry_id, piece[n - 1], len[n - 1]);
        p->entry_id[len[n - 1]] = '\0';
    }
}

static void pieces_release(struct pieces *p)
{
    for (size_t i = 0; i < p->ncopies; i++)
        free(p->copies[i]);
    free(p->entry_id);
}

/* err (errlen bytes, pre-filled with 0xff) holds a message. */
static void check_message(const char *err, size_t errlen, int whole)
{
    const char *nul;

    if (errlen == 0)
        return;
    nul = memchr(err, '\0', errlen);
    FUZZ_CHECK(nul != NULL);
    for (const char *s = err; s < nul; s++)
        FUZZ_CHECK(*s >= 0x20 && *s <= 0x7e);
    if (whole)
        FUZZ_CHECK((size_t)(nul - err) + 1 < errlen); /* not cut */
}

static int terminated(const char *s, size_t cap)
{
    return memchr(s, '\0', cap) != NULL;
}

static void check_envelope(const char *stream, const struct envelope *e)
{
    FUZZ_CHECK(json_is_object(e->data));
    FUZZ_CHECK(json_object_size(e->data) <= MAX_SPEC_FIELDS);
    FUZZ_CHECK(terminated(e->type, sizeof(e->type)) && e->type[0] != '\0');
    FUZZ_CHECK(terminated(e->id, sizeof(e->id)) && e->id[0] != '\0');
    FUZZ_CHECK(terminated(e->trace, sizeof(e->trace)));
    FUZZ_CHECK(terminated(e->source, sizeof(e->source)));
    FUZZ_CHECK(e->v == STREAMS_ENVELOPE_VERSION);
    FUZZ_CHECK(e->ts >= 0);
    FUZZ_CHECK(fixture_known(stream, e->type));
    FUZZ_CHECK(fixture_validate(stream, e->type, e->data, NULL, 0) == 0);
}

/* The entry id as a stream name: "<stream>.dlq" or a clean error. */
static void check_names(const char *stream)
{
    static const size_t sizes[] = {0, 1, 8, 64, 300};
    size_t n = strlen(stream);

    FUZZ_CHECK(streams_is_commands(stream) ==
               (n >= 9 && memcmp(stream + n - 9, ".commands", 9) == 0));
    for (size_t i = 0; i < ARRAY_SIZE(sizes); i++) {
        char *buf = malloc(sizes[i] + 1); /* + 1: never NULL */
        int rc;

        FUZZ_CHECK(buf != NULL);
        rc = streams_dlq_name(stream, buf, sizes[i]);
        if (n == 0) {
            FUZZ_CHECK(rc == -EINVAL);
        } else if (n + 4 < sizes[i]) {
            FUZZ_CHECK(rc == 0 && memcmp(buf, stream, n) == 0 && strcmp(buf + n, ".dlq") == 0);
        } else {
            FUZZ_CHECK(rc == -ENAMETOOLONG && (sizes[i] == 0 || buf[0] == '\0'));
        }
        free(buf);
    }
}

static void parse_fields(const uint8_t *data, size_t size)
{
    struct pieces p;
    const char *entry_id;
    int real_id;

    split(&p, data, size);
    entry_id = p.entry_id ? p.entry_id : DEFAULT_ENTRY_ID;
    real_id = strlen(entry_id) <= REDIS_MAX_ENTRY_ID;
    check_names(entry_id);
    for (size_t i = 0; i < ARRAY_SIZE(streams); i++) {
        size_t errlen = err_sizes[i % ARRAY_SIZE(err_sizes)];
        char *err = errlen ? malloc(errlen) : NULL;
        struct envelope e;
        int rc;

        if (err)
            memset(err, 0xff, errlen);
        rc = fixture_parse(streams[i], entry_id, p.fields, p.nfields, &e, err, errlen);
        FUZZ_CHECK(rc == 0 || rc == -EINVAL || rc == -ENOENT);
        if (rc == 0) {
            check_envelope(streams[i], &e);
        } else {
            FUZZ_CHECK(e.data == NULL);
            check_message(err, errlen, real_id && errlen == STREAMS_MAX_ERR);
        }
        envelope_release(&e);
        envelope_release(&e);
        free(err);
    }
    pieces_release(&p);
}

static void validate_json(const uint8_t *data, size_t size)
{
    json_error_t je;
    json_t *v = json_loadb((const char *)data, size, JSON_DECODE_ANY | JSON_REJECT_DUPLICATES, &je);
    const char *stream, *type;

    if (v == NULL)
        return;
    for (size_t i = 0; fixture_entry(i, &stream, &type) == 0; i++) {
        size_t errlen = err_sizes[i % ARRAY_SIZE(err_sizes)];
        char *err = errlen ? malloc(errlen) : NULL;
        int rc;

        if (err)
            memset(err, 0xff, errlen);
        rc = fixture_validate(stream, type, v, err, errlen);
        FUZZ_CHECK(rc == 0 || rc == -EINVAL);
        if (rc == 0) {
            FUZZ_CHECK(json_is_object(v) && json_object_size(v) <= MAX_SPEC_FIELDS);
        } else {
            check_message(err, errlen, errlen == STREAMS_MAX_ERR);
        }
        free(err);
    }
    FUZZ_CHECK(fixture_validate(STREAM_USERS_COMMANDS, "no.such.type", v, NULL, 0) == -ENOENT);
    json_decref(v);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    parse_fields(data, size);
    validate_json(data, size);
    return 0;
}
