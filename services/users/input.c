/* input.c -- the users service's input rules. See input.h.
 *
 * Byte-wise and ASCII-only on purpose: SQLite's NOCASE collation and lower()
 * fold ASCII only, and the schema checks email = lower(trim(email)), so the
 * rules here and the database's agree. Strings are UTF-8 (jansson validates
 * them), which lets a password's characters be counted by lead bytes. */
#include "input.h"

#include <errno.h>
#include <string.h>

#include <jansson.h>

static int is_space(unsigned char c)
{
    return c == ' ' || (c >= '\t' && c <= '\r');
}

static int has_control(const char *s, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];

        if (c < 0x20 || c == 0x7f)
            return 1;
    }
    return 0;
}

void input_trim(const char **s, size_t *len)
{
    while (*len > 0 && is_space((unsigned char)**s)) {
        (*s)++;
        (*len)--;
    }
    while (*len > 0 && is_space((unsigned char)(*s)[*len - 1]))
        (*len)--;
}

const char *input_name_problem(const char *s, size_t len)
{
    if (len == 0)
        return "must not be empty";
    if (len > INPUT_NAME_MAX)
        return "must be at most 100 bytes";
    if (has_control(s, len))
        return "must not contain control characters";
    return NULL;
}

/* The domain: a dot, no empty label, no second '@'. */
static int domain_plausible(const char *d, size_t len)
{
    if (len < 3 || memchr(d, '@', len) != NULL || memchr(d, '.', len) == NULL)
        return 0;
    if (d[0] == '.' || d[len - 1] == '.')
        return 0;
    for (size_t i = 1; i < len; i++) {
        if (d[i] == '.' && d[i - 1] == '.')
            return 0;
    }
    return 1;
}

const char *input_email_problem(const char *s, size_t len)
{
    const char *at;

    if (len > INPUT_EMAIL_MAX)
        return "must be at most 254 bytes";
    at = memchr(s, '@', len);
    if (at == NULL || at == s || has_control(s, len) || memchr(s, ' ', len) != NULL)
        return "must be a valid address";
    if (!domain_plausible(at + 1, len - (size_t)(at + 1 - s)))
        return "must be a valid address";
    return NULL;
}

const char *input_password_problem(const char *s, size_t len)
{
    size_t chars = 0;

    if (len > INPUT_PASSWORD_MAX)
        return "must be at most 1024 bytes";
    for (size_t i = 0; i < len; i++)
        chars += ((unsigned char)s[i] & 0xc0) != 0x80; /* not a continuation byte */
    if (chars < INPUT_PASSWORD_MIN)
        return "must be at least 8 characters";
    return NULL;
}

void input_lower(char *dst, const char *s, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        char c = s[i];

        if (c >= 'A' && c <= 'Z')
            c = (char)(c - 'A' + 'a');
        dst[i] = c;
    }
    dst[len] = '\0';
}

/* Records "key": msg in fields. An ENOMEM loses only the message: callers
 * count problems by return value, so the answer stays a 422. */
static int field_problem(json_t *fields, const char *key, const char *msg)
{
    json_object_set_new(fields, key, json_string(msg));
    return -EINVAL;
}

int input_string(json_t *body, const char *key, int trim, input_problem_cb problem, json_t *fields,
                 const char **s, size_t *len)
{
    const json_t *v = json_object_get(body, key);
    const char *msg;

    if (v == NULL || json_is_null(v))
        return field_problem(fields, key, "is required");
    if (!json_is_string(v))
        return field_problem(fields, key, "must be a string");
    *s = json_string_value(v);
    *len = json_string_length(v);
    if (trim)
        input_trim(s, len);
    msg = problem != NULL ? problem(*s, *len) : NULL;
    return msg != NULL ? field_problem(fields, key, msg) : 0;
}
