/* clock.c -- wall-clock time. See clock.h. */
#include <ripple/clock.h>

#include <errno.h>
#include <stdio.h>
#include <time.h>

static int now(struct timespec *ts)
{
    return clock_gettime(CLOCK_REALTIME, ts) < 0 ? -errno : 0;
}

int64_t clock_now_ms(void)
{
    struct timespec ts = {0, 0};

    (void)now(&ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t clock_now_us(void)
{
    struct timespec ts = {0, 0};

    (void)now(&ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

int clock_iso8601(char *buf, size_t len)
{
    struct timespec ts;
    struct tm tm;
    char sec[32];
    int n;

    if (now(&ts) < 0 || gmtime_r(&ts.tv_sec, &tm) == NULL)
        return -EIO;
    if (strftime(sec, sizeof(sec), "%Y-%m-%dT%H:%M:%S", &tm) == 0)
        return -EOVERFLOW;
    n = snprintf(buf, len, "%s.%03ldZ", sec, ts.tv_nsec / 1000000);
    return n < 0 || (size_t)n >= len ? -ENOSPC : 0;
}
