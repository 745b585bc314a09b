/* json_out.c -- JSON text into a bounded buffer. See json_out.h. */
#include <ripple/json_out.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

void json_out_mem(struct json_out *b, const char *s, size_t n)
{
    if (b->overflow || n > b->cap - b->len) {
        b->overflow = 1;
        return;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
}

void json_out_raw(struct json_out *b, const char *s)
{
    json_out_mem(b, s, strlen(s));
}

/* The runs between the characters that need an escape are copied whole. */
void json_out_strn(struct json_out *b, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    const char *end = s + n;

    json_out_mem(b, "\"", 1);
    while (s < end && !b->overflow) {
        size_t run = 0;
        unsigned char c = 0;

        while (s + run < end && (c = (unsigned char)s[run]) >= 0x20 && c != '"' && c != '\\')
            run++;
        json_out_mem(b, s, run);
        s += run;
        if (s == end)
            break;
        if (c < 0x20) {
            char esc[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 0xf]};

            json_out_mem(b, esc, sizeof(esc));
        } else {
            char esc[2] = {'\\', (char)c};

            json_out_mem(b, esc, sizeof(esc));
        }
        s++;
    }
    json_out_mem(b, "\"", 1);
}

void json_out_str(struct json_out *b, const char *s)
{
    if (s == NULL)
        json_out_mem(b, "null", 4);
    else
        json_out_strn(b, s, strlen(s));
}

/* Digits from the right: no snprintf on the hot path. */
void json_out_int(struct json_out *b, long long v)
{
    char num[24], *p = num + sizeof(num);
    unsigned long long u = v < 0 ? 0ULL - (unsigned long long)v : (unsigned long long)v;

    do {
        *--p = (char)('0' + u % 10);
        u /= 10;
    } while (u != 0);
    if (v < 0)
        *--p = '-';
    json_out_mem(b, p, (size_t)(num + sizeof(num) - p));
}

/* A real as jansson writes it: 17 significant digits, kept a real when
 * read back ("1.0", not "1"), an exponent without '+' or leading zeros. */
static void put_real(struct json_out *b, double d)
{
    char num[40], *e, *digits;
    int n = snprintf(num, sizeof(num), "%.17g", d);

    if (n < 0 || (size_t)n >= sizeof(num) - 2) {
        b->overflow = 1;
        return;
    }
    if ((e = strchr(num, 'e')) != NULL) {
        digits = e + 1;
        if (*digits == '-')
            digits++;
        e = digits;
        while (*e == '+' || (*e == '0' && e[1] != '\0'))
            e++;
        memmove(digits, e, strlen(e) + 1);
    } else if (strchr(num, '.') == NULL) {
        memcpy(num + n, ".0", 3); /* fits: n < sizeof(num) - 2 */
    }
    json_out_raw(b, num);
}

void json_out_value(struct json_out *b, const json_t *v)
{
    const char *key;
    json_t *item;
    size_t i, klen;
    int first = 1;

    if (v == NULL) /* what json_dumps refuses too */
        b->overflow = 1;
    if (b->overflow)
        return; /* the text is lost: the caller falls back, no need to walk on */
    switch (json_typeof(v)) {
    case JSON_OBJECT:
        json_out_mem(b, "{", 1);
        /* keys by length: jansson allows a NUL inside one (json_object_setn) */
        json_object_keylen_foreach((json_t *)v, key, klen, item)
        {
            if (!first)
                json_out_mem(b, ",", 1);
            first = 0;
            json_out_strn(b, key, klen);
            json_out_mem(b, ":", 1);
            json_out_value(b, item);
        }
        json_out_mem(b, "}", 1);
        break;
    case JSON_ARRAY:
        json_out_mem(b, "[", 1);
        json_array_foreach(v, i, item)
        {
            if (i > 0)
                json_out_mem(b, ",", 1);
            json_out_value(b, item);
        }
        json_out_mem(b, "]", 1);
        break;
    case JSON_STRING:
        json_out_strn(b, json_string_value(v), json_string_length(v));
        break;
    case JSON_INTEGER:
        json_out_int(b, (long long)json_integer_value(v));
        break;
    case JSON_REAL:
        put_real(b, json_real_value(v));
        break;
    case JSON_TRUE:
        json_out_mem(b, "true", 4);
        break;
    case JSON_FALSE:
        json_out_mem(b, "false", 5);
        break;
    default:
        json_out_mem(b, "null", 4);
        break;
    }
}

char *json_out_dump(const json_t *v, char *buf, size_t cap, size_t *len)
{
    struct json_out b;
    char *text;

    if (v == NULL)
        return NULL;
    json_out_init(&b, buf, cap > 0 ? cap - 1 : 0);
    json_out_value(&b, v);
    if (cap > 0 && !b.overflow) {
        buf[b.len] = '\0';
        *len = b.len;
        return buf;
    }
    if ((text = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY)) != NULL)
        *len = strlen(text);
    return text;
}
