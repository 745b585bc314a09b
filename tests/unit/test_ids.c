/* test_ids.c -- core/ids: new ids, and the one canonical spelling of a UUID. */
#include <criterion/criterion.h>
#include <errno.h>
#include <string.h>

#include <ripple/ids.h>

Test(ids, new_ids_are_canonical_and_versioned)
{
    char v4[IDS_UUID_LEN + 1], v7[IDS_UUID_LEN + 1], out[IDS_UUID_LEN + 1];

    ids_uuid4(v4);
    ids_uuid7(v7);
    cr_assert(ids_is_uuid(v4, strlen(v4)), "%s", v4);
    cr_assert(ids_is_uuid(v7, strlen(v7)), "%s", v7);
    cr_assert_eq(v4[14], '4', "%s", v4);
    cr_assert_eq(v7[14], '7', "%s", v7);
    cr_assert_eq(ids_canonical(v7, strlen(v7), out), 0);
    cr_assert_str_eq(out, v7, "a new id is already canonical");
}

Test(ids, canonical_lowers_the_hex_digits_only)
{
    const char *in = "0189ABCD-EF01-7ABC-8DEF-0123456789AF";
    char out[IDS_UUID_LEN + 1];

    memset(out, 'x', sizeof(out));
    cr_assert_eq(ids_canonical(in, strlen(in), out), 0);
    cr_assert_str_eq(out, "0189abcd-ef01-7abc-8def-0123456789af");
}

Test(ids, canonical_refuses_what_is_not_a_uuid)
{
    static const char *const bad[] = {
        "",
        "0189abcd-ef01-7abc-8def-0123456789a",   /* 35 */
        "0189abcd-ef01-7abc-8def-0123456789abc", /* 37 */
        "0189abcd_ef01-7abc-8def-0123456789af",  /* no dash */
        "0189abcg-ef01-7abc-8def-0123456789af",  /* g */
        "0189abcd-ef01-7abc-8def-0123456789aZ",  /* Z: not lowered into hex */
        "0189abcd-ef01-7abc-8def-0123456789a\xc3\xa9",
    };
    char out[IDS_UUID_LEN + 1];

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        cr_assert_eq(ids_canonical(bad[i], strlen(bad[i]), out), -EINVAL, "%s", bad[i]);
    cr_assert_eq(ids_canonical(NULL, 0, out), -EINVAL);
    /* the length given is what counts, not a NUL further on */
    cr_assert_eq(ids_canonical("0189abcd-ef01-7abc-8def-0123456789afff", 36, out), 0);
    cr_assert_str_eq(out, "0189abcd-ef01-7abc-8def-0123456789af");
}
