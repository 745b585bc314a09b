/* input.h -- the users service's input rules: names, emails, passwords, ids.
 *
 * Pure functions over (pointer, length) spans, shared by the HTTP routes and
 * (from the streams issue on) the user.register handler, so both paths store
 * the same shapes: names trimmed, emails trimmed and ASCII lower-cased, ids
 * lower-case UUIDs. Messages are static strings meant for a 422 "fields"
 * object. No state, no allocation but jansson's for field messages. */
#ifndef SERVICES_USERS_INPUT_H
#define SERVICES_USERS_INPUT_H

#include <stddef.h>

#include <ripple/common.h>

struct json_t;

#define INPUT_NAME_MAX 100      /* bytes, after trimming */
#define INPUT_EMAIL_MAX 254     /* bytes, after trimming (RFC 5321 path) */
#define INPUT_PASSWORD_MIN 8    /* characters (UTF-8 code points) */
#define INPUT_PASSWORD_MAX 1024 /* bytes */

/* Narrows (*s, *len) to drop leading and trailing ASCII white space. */
void input_trim(const char **s, size_t *len);

/* Each returns NULL when the (already trimmed) value is acceptable, else a
 * static message saying what is wrong. */
const char *input_name_problem(const char *s, size_t len);
/* One '@', a non-empty local part, a domain with a dot between non-empty
 * labels, no spaces or control characters, at most INPUT_EMAIL_MAX bytes. */
const char *input_email_problem(const char *s, size_t len);
/* INPUT_PASSWORD_MIN characters to INPUT_PASSWORD_MAX bytes; s is UTF-8. */
const char *input_password_problem(const char *s, size_t len);

/* Copies s into dst (len + 1 bytes), ASCII lower-cased and NUL-terminated. */
void input_lower(char *dst, const char *s, size_t len);

typedef const char *(*input_problem_cb)(const char *s, size_t len);

/* Gets body[key] as a string: *s borrowed from body, *len its length in
 * bytes; trimmed when trim is set, then checked with problem (NULL: any
 * string). Returns 0, or -EINVAL after recording "key": message in fields
 * (absent or null: "is required"; another JSON type: "must be a string"). */
CORE_MUST_CHECK int input_string(struct json_t *body, const char *key, int trim,
                                 input_problem_cb problem, struct json_t *fields, const char **s,
                                 size_t *len);

#endif
