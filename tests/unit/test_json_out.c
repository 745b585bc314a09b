/* test_json_out.c -- core/json_out: what it writes parses back to what went
 * in (jansson is the judge), and nothing is written past the buffer. */
#include <criterion/criterion.h>
#include <jansson.h>
#include <limits.h>
#include <stdlib.h>
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

/* json_out_value writes what json_dumps(JSON_COMPACT) writes, byte for byte,
 * for every kind of value jansson has (control characters aside: those it
 * escapes as \u00XX where jansson writes \n; both parse back the same). */
Test(json_out, a_jansson_tree_is_written_as_json_dumps_writes_it)
{
    static const char *const cases[] = {
        "{}",
        "[]",
        "{\"order_id\":\"0193f\",\"items\":[{\"sku\":\"SKU-1\",\"qty\":2}],\"amount_cents\":700}",
        "[true,false,null,0,-1,9223372036854775807,-9223372036854775808]",
        "[1.0,0.1,-2.5e-07,1e+20,1.7976931348623157e308,5e-324,123456.789]",
        "{\"quote\\\"\":\"back\\\\slash\",\"utf8\":\"Zo\\u00eb \\u6771 \\ud83d\\ude00\"}",
        "{\"nested\":{\"a\":[[],[{}],{\"b\":[1,[2,[3]]]}]},\"last\":\"\"}",
        "\"a bare string\"",
        "42",
    };
    char buf[512];
    struct json_out b;

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        json_t *v = json_loads(cases[i], JSON_DECODE_ANY, NULL);
        char *want;

        cr_assert_not_null(v, "case %zu does not parse", i);
        want = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
        json_out_init(&b, buf, sizeof(buf));
        json_out_value(&b, v);
        cr_assert_not(b.overflow, "case %zu", i);
        cr_assert_eq(b.len, strlen(want), "case %zu: %.*s, want %s", i, (int)b.len, buf, want);
        cr_assert_eq(memcmp(buf, want, b.len), 0, "case %zu: %.*s, want %s", i, (int)b.len, buf,
                     want);
        free(want);
        json_decref(v);
    }
}

/* A string with a NUL and control characters inside comes back whole. */
Test(json_out, a_string_value_keeps_its_nul_and_control_characters)
{
    json_t *v = json_stringn("a\0b\nc\x01", 6), *back;
    char buf[64];
    struct json_out b;

    json_out_init(&b, buf, sizeof(buf));
    json_out_value(&b, v);
    cr_assert_not(b.overflow);
    back = json_loadb(buf, b.len, JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);
    cr_assert(json_equal(v, back), "%.*s", (int)b.len, buf);
    json_decref(back);
    json_decref(v);
}

/* json_out_dump answers from the caller's buffer when the text fits and
 * from json_dumps when it does not: the same text either way. */
Test(json_out, a_dump_too_large_for_the_buffer_comes_from_jansson)
{
    json_t *v = json_pack("{s:s, s:[i, i, i], s:f}", "name", "a fairly long string value", "n", 1,
                          22, 333, "x", 0.5);
    char *want = json_dumps(v, JSON_COMPACT), small[16], big[256], *text;
    size_t len = 0;

    text = json_out_dump(v, big, sizeof(big), &len);
    cr_assert_eq(text, big);
    cr_assert_eq(len, strlen(want));
    cr_assert_eq(text[len], '\0');
    cr_assert_eq(memcmp(text, want, len), 0);
    text = json_out_dump(v, small, sizeof(small), &len);
    cr_assert_not_null(text);
    cr_assert_neq(text, small);
    cr_assert_str_eq(text, want);
    cr_assert_eq(len, strlen(want));
    free(text);
    free(want);
    json_decref(v);
}

/* A key with a NUL inside (json_object_setn) is written whole, as
 * json_dumps writes it; NULL is refused like json_dumps refuses it. */
Test(json_out, a_key_with_a_nul_is_written_whole_and_null_is_refused)
{
    json_t *v = json_object();
    char *want, buf[64];
    struct json_out b;
    size_t len = 1;

    cr_assert_eq(json_object_setn_new(v, "a\0b", 3, json_integer(1)), 0);
    cr_assert_eq(json_object_set_new(v, "a", json_integer(2)), 0);
    want = json_dumps(v, JSON_COMPACT);
    json_out_init(&b, buf, sizeof(buf));
    json_out_value(&b, v);
    cr_assert_not(b.overflow);
    cr_assert_eq(b.len, strlen(want), "%.*s, want %s", (int)b.len, buf, want);
    cr_assert_eq(memcmp(buf, want, b.len), 0, "%.*s, want %s", (int)b.len, buf, want);
    free(want);
    json_decref(v);

    json_out_init(&b, buf, sizeof(buf));
    json_out_value(&b, NULL);
    cr_assert(b.overflow);
    cr_assert_null(json_out_dump(NULL, buf, sizeof(buf), &len));
}

/* A text of exactly cap - 1 bytes fits (its NUL takes the last byte); one
 * byte more comes from jansson. */
Test(json_out, a_dump_that_fills_the_buffer_to_its_last_byte_fits)
{
    json_t *v = json_string("0123456789"); /* "0123456789": 12 bytes */
    char buf[13], *text;
    size_t len = 0;

    memset(buf, '#', sizeof(buf));
    text = json_out_dump(v, buf, 13, &len);
    cr_assert_eq(text, buf);
    cr_assert_eq(len, 12);
    cr_assert_str_eq(buf, "\"0123456789\"");
    text = json_out_dump(v, buf, 12, &len);
    cr_assert_neq(text, buf);
    cr_assert_str_eq(text, "\"0123456789\"");
    free(text);
    json_decref(v);
}
