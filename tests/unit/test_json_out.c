/* test_json_out.c -- core/json_out: what it writes parses back to what went
 * in (jansson is the judge), and nothing is written past the buffer. */
#include <criterion/criterion.h>
#include <jansson.h>
#include <limits.h>
#include <string.h>

#include <ripple/json_out.h>

/* Writes s as a JSON string into a fresh buffer and parses it back. */
static json_t *round_trip(const char *s, char *buf, size_t cap, struct json_out *b)
{
    json_out_init(b, buf, cap);
    json_out_str(b, s);
    cr_assert_not(b->overflow, "%zu bytes do not fit %zu", strlen(s), cap);
    return json_loadb(buf, b->len, JSON_DECODE_ANY, NULL);
}

Test(json_out, strings_come_back_whole_through_a_json_parser)
{
    static const char *const cases[] = {
        "",
        "plain",
        "quote \" and backslash \\",
        "tab\tnew\nline\rnul-less \x01\x1f",
        "UTF-8 stays: Zoë, 東京, 😀",
        "\"\\\"\\",
        "</script>",
    };
    char buf[256];
    struct json_out b;

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        json_t *v = round_trip(cases[i], buf, sizeof(buf), &b);

        cr_assert(json_is_string(v), "case %zu: %.*s", i, (int)b.len, buf);
        cr_assert_str_eq(json_string_value(v), cases[i], "case %zu", i);
        json_decref(v);
    }
}

Test(json_out, control_characters_are_escaped_and_the_rest_copied)
{
    char buf[64];
    struct json_out b;

    json_out_init(&b, buf, sizeof(buf));
    json_out_str(&b, "a\"b\\c\n\x7f");
    cr_assert_eq(b.len, strlen("\"a\\\"b\\\\c\\u000a\x7f\""));
    cr_assert_eq(memcmp(buf, "\"a\\\"b\\\\c\\u000a\x7f\"", b.len), 0, "%.*s", (int)b.len, buf);
}

Test(json_out, an_object_of_every_kind_of_value)
{
    char buf[128];
    struct json_out b;
    json_t *v;

    json_out_init(&b, buf, sizeof(buf));
    json_out_raw(&b, "{\"s\":");
    json_out_str(&b, "x");
    json_out_raw(&b, ",\"n\":");
    json_out_str(&b, NULL);
    json_out_raw(&b, ",\"min\":");
    json_out_int(&b, LLONG_MIN);
    json_out_raw(&b, ",\"i\":");
    json_out_int(&b, 42);
    json_out_raw(&b, ",\"raw\":");
    json_out_mem(&b, "[1,2]", 5);
    json_out_raw(&b, "}");
    cr_assert_not(b.overflow);
    v = json_loadb(buf, b.len, 0, NULL);
    cr_assert_not_null(v, "%.*s", (int)b.len, buf);
    cr_assert_str_eq(json_string_value(json_object_get(v, "s")), "x");
    cr_assert(json_is_null(json_object_get(v, "n")));
    cr_assert_eq(json_integer_value(json_object_get(v, "min")), LLONG_MIN);
    cr_assert_eq(json_integer_value(json_object_get(v, "i")), 42);
    cr_assert_eq(json_array_size(json_object_get(v, "raw")), 2);
    json_decref(v);
}

/* Every prefix length of the buffer: the writer stops at its end, says it
 * overflowed, and leaves the byte after it alone. */
Test(json_out, a_buffer_too_small_overflows_without_writing_past_it)
{
    const char *s = "escapes \" \\ \n and a long enough tail";
    char want[128], buf[128 + 1];
    struct json_out b;
    size_t full;

    json_out_init(&b, want, sizeof(want));
    json_out_str(&b, s);
    json_out_int(&b, 123456789);
    full = b.len;
    cr_assert_not(b.overflow);
    for (size_t cap = 0; cap <= full; cap++) {
        memset(buf, '#', sizeof(buf));
        json_out_init(&b, buf, cap);
        json_out_str(&b, s);
        json_out_int(&b, 123456789);
        cr_assert_eq(b.overflow, cap < full, "cap %zu of %zu", cap, full);
        cr_assert_leq(b.len, cap);
        cr_assert_eq(buf[cap], '#', "cap %zu: a byte written past the end", cap);
        if (!b.overflow)
            cr_assert_eq(memcmp(buf, want, full), 0);
    }
    /* Once overflowed, it stays so: later small writes that would fit do not
     * leave a text with a hole in it. */
    json_out_init(&b, buf, 4);
    json_out_raw(&b, "12345");
    json_out_raw(&b, "1");
    cr_assert(b.overflow);
    cr_assert_eq(b.len, 0);
}
