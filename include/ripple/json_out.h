/* json_out.h -- JSON text written straight into a bounded buffer.
 *
 * For answers on a hot path whose shape is fixed (one user, a new order):
 * no jansson tree to build and free, no allocation. The caller owns the
 * buffer, usually on its stack; past its end the writer only remembers that
 * it overflowed, and the caller falls back to jansson (or an error) for the
 * rare value that does not fit. Strings are UTF-8 already (they came
 * through jansson, a validator or the database), so json_out_str escapes
 * only what JSON requires: '"', '\\' and control characters. */
#ifndef RIPPLE_JSON_OUT_H
#define RIPPLE_JSON_OUT_H

#include <stddef.h>

struct json_t;

struct json_out {
    char *p;
    size_t len, cap;
    int overflow; /* something did not fit: the text is incomplete */
};

static inline void json_out_init(struct json_out *b, char *buf, size_t cap)
{
    b->p = buf;
    b->len = 0;
    b->cap = cap;
    b->overflow = 0;
}

/* Appends n bytes as they are (JSON the caller vouches for). */
void json_out_mem(struct json_out *b, const char *s, size_t n);
/* Appends the NUL-terminated s as it is. */
void json_out_raw(struct json_out *b, const char *s);
/* Appends s as a JSON string, quoted and escaped; NULL appends null. */
void json_out_str(struct json_out *b, const char *s);
/* Appends the n bytes at s (NULs included) as a JSON string. */
void json_out_strn(struct json_out *b, const char *s, size_t n);
/* Appends a JSON integer. */
void json_out_int(struct json_out *b, long long v);
/* Appends the jansson value v as compact JSON text: what
 * json_dumps(v, JSON_COMPACT) writes (control characters aside, escaped
 * as \u00XX), keys in the object's order, without its allocations (one
 * strbuffer per call) and per-character callbacks. NULL overflows b. The
 * tree must be acyclic, as every tree the runtime builds or parses is. */
void json_out_value(struct json_out *b, const struct json_t *v);
/* v as compact JSON text, NUL-terminated: in buf (cap bytes) when it fits,
 * else in a new string from json_dumps; its length in *len. Returns buf,
 * the new string (free it when it is not buf), or NULL (ENOMEM, v NULL). */
char *json_out_dump(const struct json_t *v, char *buf, size_t cap, size_t *len);

#endif
