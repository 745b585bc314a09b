/* test_trace.c -- ripple/trace.h: traceparents parsed strictly, children
 * keep the trace and flags with a new parent id, the current context. */
#include <criterion/criterion.h>

#include <errno.h>
#include <string.h>

#include <ripple/trace.h>

#define TP "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

Test(trace, parse_accepts_version_00_only_and_well_formed)
{
    char out[TRACE_PARENT_LEN + 1];
    const char *bad[] = {
        "",
        "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-011",
    };

    cr_expect_eq(trace_parse(TP, strlen(TP), out), 0);
    cr_expect_str_eq(out, TP);
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        cr_expect_eq(trace_parse(bad[i], strlen(bad[i]), out), -EINVAL, "%s", bad[i]);
        cr_expect_str_eq(out, "");
    }
    cr_expect_eq(trace_parse(NULL, 0, out), -EINVAL);
}

Test(trace, a_child_keeps_the_trace_and_flags_with_a_new_parent)
{
    char a[TRACE_PARENT_LEN + 1], b[TRACE_PARENT_LEN + 1], check[TRACE_PARENT_LEN + 1];

    trace_child(TP, a);
    trace_child(TP, b);
    cr_expect_eq(trace_parse(a, strlen(a), check), 0, "%s", a);
    cr_expect_eq(memcmp(a, TP, 36), 0, "the trace id stays: %s", a);
    cr_expect_str_eq(a + 52, "-01");
    cr_expect_neq(memcmp(a + 36, TP + 36, 16), 0, "a new parent id");
    cr_expect_neq(memcmp(a + 36, b + 36, 16), 0, "each child its own");
    trace_child(NULL, a);
    trace_child("garbage", b);
    cr_expect_eq(trace_parse(a, strlen(a), check), 0, "%s", a);
    cr_expect_eq(trace_parse(b, strlen(b), check), 0, "%s", b);
    cr_expect_neq(memcmp(a + 3, b + 3, 32), 0, "new traces differ");
}

Test(trace, the_current_context)
{
    cr_expect_null(trace_current());
    trace_set(TP);
    cr_expect_str_eq(trace_current(), TP);
    cr_expect_str_eq(trace_current_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
    trace_set("not one");
    cr_expect_null(trace_current());
    cr_expect_null(trace_current_id());
    trace_set(TP);
    trace_set(NULL);
    cr_expect_null(trace_current());
}

/* hex_digit is arithmetic, not a branch per range: every byte value is
 * tried at every position of both ids and the flags, and only 0-9 and a-f
 * pass. */
Test(trace, every_byte_but_lower_case_hex_is_refused_in_every_id_position)
{
    static const int positions[] = {3, 20, 34, 36, 44, 51, 53, 54};
    char tp[TRACE_PARENT_LEN + 1], out[TRACE_PARENT_LEN + 1];

    for (size_t k = 0; k < sizeof(positions) / sizeof(positions[0]); k++) {
        for (int c = 1; c < 256; c++) {
            int hex = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');

            memcpy(tp, TP, sizeof(tp));
            tp[positions[k]] = (char)c;
            cr_expect_eq(trace_parse(tp, TRACE_PARENT_LEN, out), hex ? 0 : -EINVAL,
                         "byte 0x%02x at %d", (unsigned)c, positions[k]);
        }
    }
}

/* The ids a new trace gets are never all zeros and always hex; many of them,
 * drawn through the pool's refills. */
Test(trace, new_ids_are_hex_and_distinct_across_pool_refills)
{
    char prev[TRACE_PARENT_LEN + 1] = TP, tp[TRACE_PARENT_LEN + 1], out[TRACE_PARENT_LEN + 1];

    for (int i = 0; i < 20000; i++) {
        trace_child(NULL, tp);
        cr_assert_eq(trace_parse(tp, strlen(tp), out), 0, "%s", tp);
        cr_assert_neq(memcmp(tp + 3, prev + 3, 32), 0, "%s", tp);
        memcpy(prev, tp, sizeof(prev));
    }
}
