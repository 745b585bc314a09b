/* test_stream_ledger.c -- core/stream_ledger: entry ids, handler failure
 * counts, the position settled last (never moving back) and the trimmed
 * count, per stream, on an in-memory store. */
#include <criterion/criterion.h>

#include <errno.h>
#include <string.h>

#include <ripple/store.h>
#include "stream_ledger.h"

static struct store *st;
static struct stream_ledger *a, *b;

static void setup(void)
{
    cr_assert_eq(store_open(":memory:", NULL, &st), 0);
    cr_assert_eq(stream_ledger_open(st, "a.commands", &a), 0);
    cr_assert_eq(stream_ledger_open(st, "b.events", &b), 0);
}

static void teardown(void)
{
    stream_ledger_free(a);
    stream_ledger_free(b);
    store_close(st);
}

TestSuite(stream_ledger, .init = setup, .fini = teardown);

Test(stream_ledger, entry_ids_parse_compare_and_format)
{
    struct stream_id x, y;
    char buf[STREAM_ID_MAX];

    cr_assert_eq(stream_id_parse("1700000000000-7", &x), 0);
    cr_assert_eq(x.ms, 1700000000000ULL);
    cr_assert_eq(x.seq, 7);
    cr_assert_eq(stream_id_parse("1700000000000", &y), 0);
    cr_assert_eq(y.seq, 0);
    cr_assert_eq(stream_id_cmp(&x, &y), 1);
    cr_assert_eq(stream_id_cmp(&y, &x), -1);
    cr_assert_eq(stream_id_cmp(&x, &x), 0);
    y.ms = 999;
    y.seq = 1000; /* the sequence matters only within one ms */
    cr_assert_eq(stream_id_cmp(&y, &x), -1);
    stream_id_format(&x, buf, sizeof(buf));
    cr_assert_str_eq(buf, "1700000000000-7");
    stream_id_format(&(struct stream_id){UINT64_MAX, UINT64_MAX}, buf, sizeof(buf));
    cr_assert_str_eq(buf, "18446744073709551615-18446744073709551615");
    cr_assert_eq(stream_id_parse("", &x), -EINVAL);
    cr_assert_eq(stream_id_parse("12-", &x), -EINVAL);
    cr_assert_eq(stream_id_parse("-1", &x), -EINVAL);
    cr_assert_eq(stream_id_parse("1-2-3", &x), -EINVAL);
    cr_assert_eq(stream_id_parse("18446744073709551616-0", &x), -EINVAL);
}

Test(stream_ledger, failures_count_per_stream_and_entry_until_forgotten)
{
    unsigned n = 99;

    cr_assert_eq(stream_ledger_failures(a, "1-0", &n), 0);
    cr_assert_eq(n, 0);
    cr_assert_eq(store_begin(st), 0);
    cr_assert_eq(stream_ledger_fail(a, "1-0", "Input/output error", &n), 0);
    cr_assert_eq(n, 1);
    cr_assert_eq(stream_ledger_fail(a, "1-0", "again", &n), 0);
    cr_assert_eq(n, 2);
    cr_assert_eq(stream_ledger_fail(b, "1-0", "another stream", &n), 0);
    cr_assert_eq(n, 1);
    cr_assert_eq(store_commit(st), 0);
    cr_assert_eq(stream_ledger_failures(a, "1-0", &n), 0);
    cr_assert_eq(n, 2);
    cr_assert_eq(store_begin(st), 0);
    cr_assert_eq(stream_ledger_forget(a, "1-0"), 0);
    cr_assert_eq(store_commit(st), 0);
    cr_assert_eq(stream_ledger_failures(a, "1-0", &n), 0);
    cr_assert_eq(n, 0);
    cr_assert_eq(stream_ledger_failures(b, "1-0", &n), 0);
    cr_assert_eq(n, 1, "forgetting one stream's entry forgot another's");
}

Test(stream_ledger, a_rolled_back_failure_does_not_count)
{
    unsigned n;

    cr_assert_eq(store_begin(st), 0);
    cr_assert_eq(stream_ledger_fail(a, "5-0", "x", &n), 0);
    store_rollback(st);
    cr_assert_eq(stream_ledger_failures(a, "5-0", &n), 0);
    cr_assert_eq(n, 0);
}

Test(stream_ledger, position_only_moves_up)
{
    struct stream_id p;

    cr_assert_eq(stream_ledger_position(a, &p), 0);
    cr_assert(p.ms == 0 && p.seq == 0);
    cr_assert_eq(store_begin(st), 0);
    cr_assert_eq(stream_ledger_advance(a, &(struct stream_id){100, 2}), 0);
    cr_assert_eq(stream_ledger_advance(a, &(struct stream_id){100, 1}), 0);
    cr_assert_eq(stream_ledger_advance(a, &(struct stream_id){99, 9}), 0);
    cr_assert_eq(store_commit(st), 0);
    cr_assert_eq(stream_ledger_position(a, &p), 0);
    cr_assert(p.ms == 100 && p.seq == 2, "position %llu-%llu", (unsigned long long)p.ms,
              (unsigned long long)p.seq);
    cr_assert_eq(stream_ledger_advance(a, &(struct stream_id){101, 0}), 0);
    cr_assert_eq(stream_ledger_position(a, &p), 0);
    cr_assert(p.ms == 101 && p.seq == 0);
    cr_assert_eq(stream_ledger_position(b, &p), 0);
    cr_assert(p.ms == 0 && p.seq == 0, "one stream's position leaked into another's");
}

Test(stream_ledger, trimmed_count_is_kept_beside_the_position)
{
    struct stream_id p;
    uint64_t t = 7;

    cr_assert_eq(stream_ledger_trimmed(a, &t), 0);
    cr_assert_eq(t, 0);
    cr_assert_eq(stream_ledger_set_trimmed(a, 340), 0);
    cr_assert_eq(stream_ledger_trimmed(a, &t), 0);
    cr_assert_eq(t, 340);
    cr_assert_eq(stream_ledger_advance(a, &(struct stream_id){5, 5}), 0);
    cr_assert_eq(stream_ledger_trimmed(a, &t), 0);
    cr_assert_eq(t, 340, "advancing the position reset the trimmed count");
    cr_assert_eq(stream_ledger_position(a, &p), 0);
    cr_assert(p.ms == 5 && p.seq == 5);
}

Test(stream_ledger, inbox_remembers_and_prunes_by_age)
{
    unsigned n;

    cr_assert_eq(stream_ledger_seen(a, "ev-1"), 0);
    cr_assert_eq(stream_ledger_claim(a, "ev-1"), 1);
    cr_assert_eq(stream_ledger_seen(a, "ev-1"), 1);
    cr_assert_eq(stream_ledger_claim(a, "ev-1"), 0, "claimed twice");
    cr_assert_eq(stream_ledger_fail(a, "9-0", "x", &n), 0);
    /* nothing is older than a cut-off in the past */
    cr_assert_eq(stream_ledger_prune(a, 0, 100), 0);
    cr_assert_eq(stream_ledger_seen(a, "ev-1"), 1);
    /* everything is older than a cut-off in the future */
    cr_assert_eq(stream_ledger_prune(b, INT64_MAX, 100), 0);
    cr_assert_eq(stream_ledger_seen(a, "ev-1"), 1, "pruning b pruned a");
    cr_assert_eq(stream_ledger_prune(a, INT64_MAX, 100), 0);
    cr_assert_eq(stream_ledger_seen(a, "ev-1"), 0);
    cr_assert_eq(stream_ledger_failures(a, "9-0", &n), 0);
    cr_assert_eq(n, 0);
}
