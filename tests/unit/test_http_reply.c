/* test_http_reply.c -- the JSON error shape of DESIGN.md §4. */
#include <criterion/criterion.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include <ripple/http_reply.h>

static json_t *parse(const char *s, size_t len)
{
    json_error_t err;
    json_t *v = json_loadb(s, len, JSON_REJECT_DUPLICATES, &err);

    cr_assert_not_null(v, "not JSON: %s", err.text);
    return v;
}

Test(http_reply, error_shape)
{
    size_t len = 0;
    char *s = http_error_body("not_found", "no such user", NULL, &len);
    json_t *v, *e;

    cr_assert_not_null(s);
    cr_assert_eq(len, strlen(s));
    v = parse(s, len);
    cr_assert_eq(json_object_size(v), 1);
    e = json_object_get(v, "error");
    cr_assert(json_is_object(e));
    cr_assert_str_eq(json_string_value(json_object_get(e, "code")), "not_found");
    cr_assert_str_eq(json_string_value(json_object_get(e, "message")), "no such user");
    cr_assert_null(json_object_get(e, "fields"));
    json_decref(v);
    free(s);
}

Test(http_reply, fields_included)
{
    json_t *fields =
        json_pack("{s:s, s:s}", "email", "must be a valid address", "name", "is required");
    size_t len;
    char *s = http_error_body("invalid", "bad", fields, &len);
    json_t *v = parse(s, len), *f;

    f = json_object_get(json_object_get(v, "error"), "fields");
    cr_assert_str_eq(json_string_value(json_object_get(f, "email")), "must be a valid address");
    cr_assert_str_eq(json_string_value(json_object_get(f, "name")), "is required");
    cr_assert_eq(fields->refcount, 1, "fields is borrowed, not stolen");
    json_decref(fields);
    json_decref(v);
    free(s);
}

Test(http_reply, message_is_escaped)
{
    size_t len;
    char *s = http_error_body("bad_request", "quote \" and \\ and \n newline", NULL, &len);
    json_t *v = parse(s, len);

    cr_assert_str_eq(json_string_value(json_object_get(json_object_get(v, "error"), "message")),
                     "quote \" and \\ and \n newline");
    json_decref(v);
    free(s);
}

Test(http_reply, code_words)
{
    cr_assert_str_eq(http_error_code(400), "bad_request");
    cr_assert_str_eq(http_error_code(401), "unauthorized");
    cr_assert_str_eq(http_error_code(403), "forbidden");
    cr_assert_str_eq(http_error_code(404), "not_found");
    cr_assert_str_eq(http_error_code(405), "method_not_allowed");
    cr_assert_str_eq(http_error_code(409), "conflict");
    cr_assert_str_eq(http_error_code(413), "payload_too_large");
    cr_assert_str_eq(http_error_code(422), "invalid");
    cr_assert_str_eq(http_error_code(431), "headers_too_large");
    cr_assert_str_eq(http_error_code(503), "unavailable");
    cr_assert_str_eq(http_error_code(500), "internal");
}
