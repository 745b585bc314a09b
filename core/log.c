/* log.c -- JSON lines on stderr. See log.h.
 *
 * Each line is built in a stack buffer of PIPE_BUF bytes and written with one
 * write(2), so lines from one process never interleave, even from the threads
 * of a host with RIPPLE_THREADS=1 into a pipe (the kernel writes up to
 * PIPE_BUF bytes to a pipe at once). A message that does not fit is cut. */
#include <ripple/log.h>

#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <ripple/trace.h>

static enum log_level log_level = LOG_LEVEL_INFO;
static char log_service[32] = "ripple";
static __thread const char *log_current; /* borrowed; NULL: log_service */

static const char *const level_names[] = {"debug", "info", "warn", "error"};

void log_set_service(const char *name)
{
    snprintf(log_service, sizeof(log_service), "%s", name);
}

const char *log_scope(const char *name)
{
    const char *prev = log_current;

    log_current = name;
    return prev;
}

void log_set_level(enum log_level level)
{
    log_level = level;
}

enum log_level log_get_level(void)
{
    return log_level;
}

int log_parse_level(const char *s, enum log_level *out)
{
    for (size_t i = 0; i < ARRAY_SIZE(level_names); i++) {
        if (strcmp(s, level_names[i]) == 0) {
            *out = (enum log_level)i;
            return 0;
        }
    }
    return -EINVAL;
}

/* Appends src JSON-escaped to dst[*pos..cap), always leaving room for the
 * closing bytes; what does not fit is dropped. */
static void append_escaped(char *dst, size_t cap, size_t *pos, const char *src)
{
    static const char hex[] = "0123456789abcdef";
    size_t p = *pos;

    for (const unsigned char *s = (const unsigned char *)src; *s; s++) {
        if (p + 64 >= cap) /* room for the closing fields */
            break;
        if (*s == '"' || *s == '\\') {
            dst[p++] = '\\';
            dst[p++] = (char)*s;
        } else if (*s == '\n') {
            dst[p++] = '\\';
            dst[p++] = 'n';
        } else if (*s < 0x20) {
            dst[p++] = '\\';
            dst[p++] = 'u';
            dst[p++] = '0';
            dst[p++] = '0';
            dst[p++] = hex[*s >> 4];
            dst[p++] = hex[*s & 0xf];
        } else {
            dst[p++] = (char)*s;
        }
    }
    *pos = p;
}

static void append_raw(char *dst, size_t cap, size_t *pos, const char *src)
{
    size_t n = strlen(src);

    if (*pos + n >= cap)
        n = cap - *pos - 1;
    /* a span of a line that is written with its length, never a C string */
    memcpy(dst + *pos, src, n); /* NOLINT(bugprone-not-null-terminated-result) */
    *pos += n;
}

static void log_vwrite(enum log_level level, const char *trace, const char *fmt, va_list ap)
    CORE_PRINTF(3, 0);

static void log_vwrite(enum log_level level, const char *trace, const char *fmt, va_list ap)
{
    char msg[LOG_MAX_LINE];
    char line[PIPE_BUF];
    char ts[96];
    size_t pos = 0;
    struct timeval tv;
    struct tm tm;
    int saved_errno = errno;

    vsnprintf(msg, sizeof(msg), fmt, ap);
    gettimeofday(&tv, NULL);
    gmtime_r(&tv.tv_sec, &tm);
    snprintf(ts, sizeof(ts), "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900,
             tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (int)(tv.tv_usec / 1000));

    append_raw(line, sizeof(line), &pos, "{\"ts\":\"");
    append_raw(line, sizeof(line), &pos, ts);
    append_raw(line, sizeof(line), &pos, "\",\"level\":\"");
    append_raw(line, sizeof(line), &pos, level_names[level]);
    append_raw(line, sizeof(line), &pos, "\",\"service\":\"");
    append_escaped(line, sizeof(line), &pos, log_current ? log_current : log_service);
    append_raw(line, sizeof(line), &pos, "\",\"msg\":\"");
    append_escaped(line, sizeof(line), &pos, msg);
    if (trace != NULL) {
        append_raw(line, sizeof(line), &pos, "\",\"trace\":\"");
        append_escaped(line, sizeof(line), &pos, trace);
    }
    if (trace_current_id() != NULL) { /* W3C trace context of the work in hand */
        append_raw(line, sizeof(line), &pos, "\",\"trace_id\":\"");
        append_raw(line, sizeof(line), &pos, trace_current_id());
    }
    append_raw(line, sizeof(line), &pos, "\"}\n");
    if (write(STDERR_FILENO, line, pos) < 0) {
        /* Nowhere left to report it. */
    }
    errno = saved_errno;
}

void log_write(enum log_level level, const char *trace, const char *fmt, ...)
{
    va_list ap;

    if (level < log_level)
        return;
    va_start(ap, fmt);
    log_vwrite(level, trace, fmt, ap);
    va_end(ap);
}

#define LOG_DEFINE(fn, lvl)                                                                        \
    void fn(const char *fmt, ...)                                                                  \
    {                                                                                              \
        va_list ap;                                                                                \
        if ((lvl) < log_level)                                                                     \
            return;                                                                                \
        va_start(ap, fmt);                                                                         \
        log_vwrite(lvl, NULL, fmt, ap);                                                            \
        va_end(ap);                                                                                \
    }

LOG_DEFINE(log_debug, LOG_LEVEL_DEBUG)
LOG_DEFINE(log_info, LOG_LEVEL_INFO)
LOG_DEFINE(log_warn, LOG_LEVEL_WARN)
LOG_DEFINE(log_error, LOG_LEVEL_ERROR)
