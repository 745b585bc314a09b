/* promtext.c -- the few series the console reads from a service's /metrics.
 * See console.h.
 *
 * The text exposition format 0.0.4, one sample per line:
 *   name{label="value",...} value
 * Comments (#) and series the console does not use are skipped, and so is
 * any line that does not parse: the input is another process's output, read
 * within the HTTP client's response bound, never trusted. Label values may
 * hold escaped quotes (\"), which are skipped over, not decoded. */
#include "console.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* One parsed line; spans point into the text. */
struct promtext_line {
    const char *name, *labels; /* labels: between the braces, may be empty */
    size_t name_len, labels_len;
    double value;
};

static int span_is(const char *s, size_t len, const char *lit)
{
    return strlen(lit) == len && memcmp(s, lit, len) == 0;
}

/* Finds label name's value in labels; returns its span or NULL. */
static const char *label_get(const struct promtext_line *l, const char *name, size_t *len)
{
    const char *p = l->labels, *end = l->labels + l->labels_len;
    size_t nlen = strlen(name);

    while (p < end) {
        const char *eq = memchr(p, '=', (size_t)(end - p));
        const char *v;

        if (eq == NULL || eq + 1 >= end || eq[1] != '"')
            return NULL;
        v = eq + 2;
        for (p = v; p < end && *p != '"'; p++)
            if (*p == '\\')
                p++;
        if (p >= end)
            return NULL;
        if ((size_t)(eq - l->labels) >= nlen && span_is(eq - nlen, nlen, name) &&
            (eq - nlen == l->labels || eq[-(long)nlen - 1] == ',')) {
            *len = (size_t)(p - v);
            return v;
        }
        p++; /* the closing quote */
        if (p < end && *p == ',')
            p++;
    }
    return NULL;
}

/* Parses line [p, end) into *l. Returns 0, or -1 for a comment or a line
 * that does not parse. */
static int line_parse(const char *p, const char *end, struct promtext_line *l)
{
    const char *q = p;
    char num[64], *numend;
    size_t n;

    if (p == end || *p == '#')
        return -1;
    while (q < end && *q != '{' && *q != ' ')
        q++;
    l->name = p;
    l->name_len = (size_t)(q - p);
    l->labels = q;
    l->labels_len = 0;
    if (q < end && *q == '{') {
        int quoted = 0;

        l->labels = ++q;
        for (; q < end && (quoted || *q != '}'); q++) {
            if (*q == '\\')
                q++;
            else if (*q == '"')
                quoted = !quoted;
        }
        if (q >= end)
            return -1;
        l->labels_len = (size_t)(q - l->labels);
        q++;
    }
    while (q < end && *q == ' ')
        q++;
    n = strcspn(q, " \n");
    if (n == 0 || n >= sizeof(num) || q + n > end)
        return -1;
    memcpy(num, q, n);
    num[n] = '\0';
    l->value = strtod(num, &numend);
    return *numend == '\0' ? 0 : -1;
}

/* A bucket of the publish-latency histogram (le ascending, as rendered). */
static void bucket_add(struct console_sample *s, const struct promtext_line *l)
{
    size_t len;
    const char *le = label_get(l, "le", &len);
    char buf[32];

    if (le == NULL || len == 0 || len >= sizeof(buf) || s->lat_n == CONSOLE_MAX_BUCKETS)
        return;
    memcpy(buf, le, len);
    buf[len] = '\0';
    s->lat_le[s->lat_n] = span_is(le, len, "+Inf") ? INFINITY : strtod(buf, NULL);
    s->lat_cum[s->lat_n++] = l->value;
}

static void line_use(struct console_sample *s, const struct promtext_line *l)
{
    size_t len;
    const char *code;

    if (span_is(l->name, l->name_len, "http_requests_total")) {
        s->http_total += l->value;
        code = label_get(l, "code", &len);
        if (code != NULL && len == 3 && code[0] == '5')
            s->http_errors += l->value;
    } else if (span_is(l->name, l->name_len, "outbox_backlog")) {
        s->backlog = l->value;
    } else if (span_is(l->name, l->name_len, "outbox_oldest_unpublished_age_seconds")) {
        s->oldest_age_s = l->value;
    } else if (span_is(l->name, l->name_len, "process_resident_memory_bytes")) {
        s->rss_bytes = l->value;
    } else if (span_is(l->name, l->name_len, "outbox_publish_latency_seconds_bucket")) {
        bucket_add(s, l);
    } else if (span_is(l->name, l->name_len, "outbox_publish_latency_seconds_count")) {
        s->lat_count = l->value;
    }
}

void console_promtext_parse(const char *text, size_t len, struct console_sample *out)
{
    const char *p = text, *end = text + len;

    out->backlog = out->oldest_age_s = out->rss_bytes = NAN;
    out->http_total = out->http_errors = 0;
    out->lat_n = 0;
    out->lat_count = 0;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *eol = nl ? nl : end;
        struct promtext_line l;

        if (line_parse(p, eol, &l) == 0)
            line_use(out, &l);
        p = nl ? nl + 1 : end;
    }
}

/* The cumulative count of bucket i of cur minus prev's (when prev has the
 * same buckets). */
static double bucket_delta(const struct console_sample *cur, const struct console_sample *prev,
                           size_t i)
{
    return prev != NULL ? cur->lat_cum[i] - prev->lat_cum[i] : cur->lat_cum[i];
}

double console_quantile(const struct console_sample *cur, const struct console_sample *prev,
                        double q, double *count)
{
    double total, rank, lo = 0, below = 0;

    if (prev != NULL && (prev->lat_n != cur->lat_n || prev->lat_count >= cur->lat_count))
        prev = NULL;
    *count = 0;
    if (cur->lat_n == 0 || !isinf(cur->lat_le[cur->lat_n - 1]))
        return NAN;
    total = bucket_delta(cur, prev, cur->lat_n - 1);
    *count = total;
    if (total <= 0)
        return NAN;
    rank = q * total;
    for (size_t i = 0; i < cur->lat_n; i++) {
        double cum = bucket_delta(cur, prev, i);

        if (cum >= rank) {
            if (isinf(cur->lat_le[i])) /* past the last bound: say the last bound */
                return lo;
            if (cum == below)
                return cur->lat_le[i];
            return lo + (cur->lat_le[i] - lo) * (rank - below) / (cum - below);
        }
        lo = cur->lat_le[i];
        below = cum;
    }
    return lo;
}
