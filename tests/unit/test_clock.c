/* test_clock.c -- core/clock: the time forms the services store. */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <ripple/clock.h>

Test(clock, iso8601_shape_and_value)
{
    char buf[CLOCK_ISO8601_LEN + 1];
    struct tm tm;
    time_t before = time(NULL), parsed;

    cr_assert_eq(clock_iso8601(buf, sizeof(buf)), 0);
    cr_assert_eq(strlen(buf), CLOCK_ISO8601_LEN, "%s", buf);
    cr_assert_eq(buf[10], 'T');
    cr_assert_eq(buf[19], '.');
    cr_assert_eq(buf[23], 'Z');
    memset(&tm, 0, sizeof(tm));
    cr_assert_eq(sscanf(buf, "%4d-%2d-%2dT%2d:%2d:%2d", &tm.tm_year, &tm.tm_mon, &tm.tm_mday,
                        &tm.tm_hour, &tm.tm_min, &tm.tm_sec),
                 6, "%s", buf);
    tm.tm_year -= 1900;
    tm.tm_mon -= 1;
    parsed = timegm(&tm);
    cr_assert(parsed >= before - 1 && parsed <= time(NULL) + 1, "%s is not now", buf);
}

Test(clock, iso8601_refuses_a_short_buffer)
{
    char buf[CLOCK_ISO8601_LEN];

    cr_assert_eq(clock_iso8601(buf, sizeof(buf)), -ENOSPC);
}

Test(clock, ms_and_us_agree)
{
    int64_t ms = clock_now_ms(), us = clock_now_us();

    cr_assert(ms > 1700000000000LL, "%lld", (long long)ms);
    cr_assert(us / 1000 >= ms && us / 1000 - ms < 1000, "%lld vs %lld", (long long)us,
              (long long)ms);
}
