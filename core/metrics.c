/* metrics.c -- a Prometheus registry: counters, histograms, callback gauges.
 *
 * The registry owns families (one per metric name: help text, type, its
 * series in creation order) and series (name + preformatted label string +
 * value). Series are allocated one by one, so the pointers handed out stay
 * valid until metrics_free; an open-addressing hash table over (name, labels)
 * makes find-or-create cheap enough for per-request use. Rendering walks the
 * families in creation order and writes text exposition format 0.0.4 into a
 * growing heap buffer (our own output, not input, so growth is fine).
 * Histogram buckets are stored per bucket and summed when rendered, so an
 * observation touches one counter. Loop thread only; no locking. */
#include <ripple/metrics.h>

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum metric_type { METRIC_COUNTER, METRIC_GAUGE, METRIC_HISTOGRAM };

static const char *const type_names[] = {"counter", "gauge", "histogram"};

struct metrics_counter {
    uint64_t value;
};

struct metrics_histogram {
    size_t nbounds;
    double bounds[METRICS_MAX_BUCKETS];       /* ascending upper bounds */
    uint64_t counts[METRICS_MAX_BUCKETS + 1]; /* per bucket; the last is +Inf */
    double sum;
    uint64_t count;
};

struct metrics_gauge_fn {
    metrics_gauge_cb fn;
    void *data; /* borrowed */
};

struct family {
    char *name, *help; /* owned */
    enum metric_type type;
    struct series *first, *last;
    struct family *next;
};

struct series {
    struct family *fam; /* borrowed from the registry */
    char *labels;       /* owned; "" for none */
    uint64_t hash;
    struct series *next; /* next in the family, creation order */
    union {
        struct metrics_counter counter;
        struct metrics_histogram hist;
        struct metrics_gauge_fn gauge;
    } u;
};

struct metrics {
    struct family *first_family, *last_family;
    struct series **table; /* open addressing; size a power of two */
    size_t table_size, nseries;
};

#define METRICS_INITIAL_TABLE 64

int metrics_new(struct metrics **out)
{
    struct metrics *m = calloc(1, sizeof(*m));

    *out = NULL;
    if (m == NULL)
        return -ENOMEM;
    m->table =
        calloc(METRICS_INITIAL_TABLE, sizeof(struct series *)); /* NOLINT: an array of pointers */
    if (m->table == NULL) {
        free(m);
        return -ENOMEM;
    }
    m->table_size = METRICS_INITIAL_TABLE;
    *out = m;
    return 0;
}

void metrics_free(struct metrics *m)
{
    struct family *f, *fnext;
    struct series *s, *snext;

    if (m == NULL)
        return;
    for (f = m->first_family; f != NULL; f = fnext) {
        fnext = f->next;
        for (s = f->first; s != NULL; s = snext) {
            snext = s->next;
            free(s->labels);
            free(s);
        }
        free(f->name);
        free(f->help);
        free(f);
    }
    free(m->table);
    free(m);
}

/* ---------------------------------------------------------------- lookup */

static uint64_t series_hash(const char *name, const char *labels)
{
    uint64_t h = 14695981039346656037ULL; /* FNV-1a */

    for (const unsigned char *p = (const unsigned char *)name; *p; p++)
        h = (h ^ *p) * 1099511628211ULL;
    h = (h ^ 0xff) * 1099511628211ULL; /* separator: never in a name */
    for (const unsigned char *p = (const unsigned char *)labels; *p; p++)
        h = (h ^ *p) * 1099511628211ULL;
    return h;
}

static struct series *table_find(const struct metrics *m, const char *name, const char *labels,
                                 uint64_t hash)
{
    size_t mask = m->table_size - 1;

    for (size_t i = hash & mask;; i = (i + 1) & mask) {
        struct series *s = m->table[i];

        if (s == NULL)
            return NULL;
        if (s->hash == hash && strcmp(s->fam->name, name) == 0 && strcmp(s->labels, labels) == 0)
            return s;
    }
}

static void table_put(struct series **table, size_t size, struct series *s)
{
    size_t i = s->hash & (size - 1);

    while (table[i] != NULL)
        i = (i + 1) & (size - 1);
    table[i] = s;
}

/* Keeps the load factor under 1/2 so probes stay short. */
static int table_reserve(struct metrics *m)
{
    struct series **table;
    size_t size = m->table_size * 2;

    if ((m->nseries + 1) * 2 <= m->table_size)
        return 0;
    table = calloc(size, sizeof(struct series *)); /* NOLINT: an array of pointers */
    if (table == NULL)
        return -ENOMEM;
    for (size_t i = 0; i < m->table_size; i++)
        if (m->table[i] != NULL)
            table_put(table, size, m->table[i]);
    free(m->table);
    m->table = table;
    m->table_size = size;
    return 0;
}

/* [a-zA-Z_:][a-zA-Z0-9_:]* */
static int valid_name(const char *name)
{
    if (name == NULL || *name == '\0' || (*name >= '0' && *name <= '9'))
        return 0;
    for (const char *p = name; *p; p++) {
        char c = *p;

        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == ':'))
            return 0;
    }
    return 1;
}

static struct family *family_find(const struct metrics *m, const char *name)
{
    struct family *f;

    for (f = m->first_family; f != NULL; f = f->next)
        if (strcmp(f->name, name) == 0)
            return f;
    return NULL;
}

static struct family *family_new(struct metrics *m, const char *name, const char *help,
                                 enum metric_type type)
{
    struct family *f = calloc(1, sizeof(*f));

    if (f == NULL)
        return NULL;
    f->name = strdup(name);
    f->help = strdup(help != NULL ? help : "");
    if (f->name == NULL || f->help == NULL) {
        free(f->name);
        free(f->help);
        free(f);
        return NULL;
    }
    f->type = type;
    if (m->last_family != NULL)
        m->last_family->next = f;
    else
        m->first_family = f;
    m->last_family = f;
    return f;
}

/* Finds (name, labels) or creates it with type; *state is 1 when created,
 * 0 when found. NULL with *state = -EINVAL when the name or labels are
 * invalid or the name is registered with another type, -ENOMEM when out of
 * memory. */
static struct series *series_get(struct metrics *m, const char *name, const char *help,
                                 const char *labels, enum metric_type type, int *state)
{
    uint64_t hash;
    struct family *f;
    struct series *s;

    *state = -EINVAL;
    if (m == NULL || !valid_name(name) || labels == NULL || strchr(labels, '\n') != NULL)
        return NULL;
    hash = series_hash(name, labels);
    s = table_find(m, name, labels, hash);
    if (s != NULL) {
        *state = s->fam->type == type ? 0 : -EINVAL;
        return *state == 0 ? s : NULL;
    }
    f = family_find(m, name);
    if (f != NULL && f->type != type)
        return NULL;
    *state = -ENOMEM;
    if (table_reserve(m) < 0 || (f == NULL && (f = family_new(m, name, help, type)) == NULL))
        return NULL;
    s = calloc(1, sizeof(*s));
    if (s == NULL || (s->labels = strdup(labels)) == NULL) {
        free(s);
        return NULL;
    }
    s->fam = f;
    s->hash = hash;
    if (f->last != NULL)
        f->last->next = s;
    else
        f->first = s;
    f->last = s;
    table_put(m->table, m->table_size, s);
    m->nseries++;
    *state = 1;
    return s;
}

/* ---------------------------------------------------------------- series */

struct metrics_counter *metrics_counter(struct metrics *m, const char *name, const char *help,
                                        const char *labels)
{
    int state;
    struct series *s = series_get(m, name, help, labels, METRIC_COUNTER, &state);

    return s != NULL ? &s->u.counter : NULL;
}

void metrics_counter_add(struct metrics_counter *c, uint64_t n)
{
    if (c != NULL)
        c->value += n;
}

static int valid_bounds(const double *bounds, size_t nbounds)
{
    if (nbounds > METRICS_MAX_BUCKETS || (nbounds > 0 && bounds == NULL))
        return 0;
    for (size_t i = 0; i < nbounds; i++) {
        if (!isfinite(bounds[i]) || (i > 0 && !(bounds[i] > bounds[i - 1])))
            return 0;
    }
    return 1;
}

struct metrics_histogram *metrics_histogram(struct metrics *m, const char *name, const char *help,
                                            const char *labels, const double *bounds,
                                            size_t nbounds)
{
    struct metrics_histogram *h;
    struct series *s;
    int state;

    if (!valid_bounds(bounds, nbounds))
        return NULL;
    s = series_get(m, name, help, labels, METRIC_HISTOGRAM, &state);
    if (s == NULL)
        return NULL;
    h = &s->u.hist;
    if (state == 1) {
        h->nbounds = nbounds;
        if (nbounds > 0)
            memcpy(h->bounds, bounds, nbounds * sizeof(*bounds));
        return h;
    }
    /* an existing series must have been asked for with the same buckets */
    if (h->nbounds != nbounds ||
        (nbounds > 0 && memcmp(h->bounds, bounds, nbounds * sizeof(*bounds)) != 0))
        return NULL;
    return h;
}

void metrics_histogram_observe(struct metrics_histogram *h, double v)
{
    size_t i = 0;

    if (h == NULL)
        return;
    while (i < h->nbounds && !(v <= h->bounds[i])) /* NaN lands in +Inf */
        i++;
    h->counts[i]++;
    h->count++;
    h->sum += v;
}

void metrics_gauge_detach(struct metrics *m, const void *data)
{
    for (struct family *f = m->first_family; f != NULL; f = f->next) {
        if (f->type != METRIC_GAUGE)
            continue;
        for (struct series *s = f->first; s != NULL; s = s->next) {
            if (s->u.gauge.data == data) {
                s->u.gauge.fn = NULL;
                s->u.gauge.data = NULL;
            }
        }
    }
}

int metrics_gauge(struct metrics *m, const char *name, const char *help, const char *labels,
                  metrics_gauge_cb fn, void *data)
{
    struct series *s;
    int state;

    if (fn == NULL)
        return -EINVAL;
    s = series_get(m, name, help, labels, METRIC_GAUGE, &state);
    if (s == NULL)
        return state;   /* -EINVAL or -ENOMEM */
    s->u.gauge.fn = fn; /* registering again replaces the callback */
    s->u.gauge.data = data;
    return 0;
}

/* ------------------------------------------------------------- rendering */

struct strbuf {
    char *buf;
    size_t len, cap;
    int oom;
};

static void sb_reserve(struct strbuf *sb, size_t extra)
{
    size_t cap = sb->cap != 0 ? sb->cap : 4096;
    char *p;

    if (sb->oom || sb->len + extra < sb->cap)
        return;
    while (cap <= sb->len + extra)
        cap *= 2;
    p = realloc(sb->buf, cap);
    if (p == NULL) {
        sb->oom = 1;
        return;
    }
    sb->buf = p;
    sb->cap = cap;
}

static void sb_printf(struct strbuf *sb, const char *fmt, ...) CORE_PRINTF(2, 3);

static void sb_printf(struct strbuf *sb, const char *fmt, ...)
{
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0) {
        sb->oom = 1;
        return;
    }
    sb_reserve(sb, (size_t)n + 1);
    if (sb->oom)
        return;
    va_start(ap, fmt);
    vsnprintf(sb->buf + sb->len, sb->cap - sb->len, fmt, ap);
    va_end(ap);
    sb->len += (size_t)n;
}

/* HELP text escapes backslash and newline (format 0.0.4). */
static void sb_help(struct strbuf *sb, const char *help)
{
    for (const char *p = help; *p; p++) {
        if (*p == '\\')
            sb_printf(sb, "\\\\");
        else if (*p == '\n')
            sb_printf(sb, "\\n");
        else
            sb_printf(sb, "%c", *p);
    }
}

/* Shortest of %.15g/%.17g that reads back as v; Go-style special values. */
static void format_double(double v, char *buf, size_t len)
{
    if (isnan(v)) {
        snprintf(buf, len, "NaN");
    } else if (isinf(v)) {
        snprintf(buf, len, "%s", v > 0 ? "+Inf" : "-Inf");
    } else {
        snprintf(buf, len, "%.15g", v);
        if (strtod(buf, NULL) != v)
            snprintf(buf, len, "%.17g", v);
    }
}

/* name{labels[,extra]} or name{extra} or name */
static void sb_series_name(struct strbuf *sb, const char *name, const char *suffix,
                           const char *labels, const char *extra)
{
    const char *sep = (*labels != '\0' && *extra != '\0') ? "," : "";

    if (*labels == '\0' && *extra == '\0')
        sb_printf(sb, "%s%s ", name, suffix);
    else
        sb_printf(sb, "%s%s{%s%s%s} ", name, suffix, labels, sep, extra);
}

static void render_histogram(struct strbuf *sb, const struct series *s)
{
    const struct metrics_histogram *h = &s->u.hist;
    const char *name = s->fam->name;
    char num[32], le[48];
    uint64_t cumulative = 0;

    for (size_t i = 0; i < h->nbounds; i++) {
        cumulative += h->counts[i];
        format_double(h->bounds[i], num, sizeof(num));
        snprintf(le, sizeof(le), "le=\"%s\"", num); /* %.17g fits: no truncation */
        sb_series_name(sb, name, "_bucket", s->labels, le);
        sb_printf(sb, "%" PRIu64 "\n", cumulative);
    }
    sb_series_name(sb, name, "_bucket", s->labels, "le=\"+Inf\"");
    sb_printf(sb, "%" PRIu64 "\n", h->count);
    format_double(h->sum, num, sizeof(num));
    sb_series_name(sb, name, "_sum", s->labels, "");
    sb_printf(sb, "%s\n", num);
    sb_series_name(sb, name, "_count", s->labels, "");
    sb_printf(sb, "%" PRIu64 "\n", h->count);
}

static void render_series(struct strbuf *sb, const struct series *s)
{
    char num[32];

    switch (s->fam->type) {
    case METRIC_COUNTER:
        sb_series_name(sb, s->fam->name, "", s->labels, "");
        sb_printf(sb, "%" PRIu64 "\n", s->u.counter.value);
        break;
    case METRIC_GAUGE:
        if (s->u.gauge.fn == NULL)
            return; /* detached: its owner is gone */
        format_double(s->u.gauge.fn(s->u.gauge.data), num, sizeof(num));
        sb_series_name(sb, s->fam->name, "", s->labels, "");
        sb_printf(sb, "%s\n", num);
        break;
    case METRIC_HISTOGRAM:
        render_histogram(sb, s);
        break;
    }
}

int metrics_render(struct metrics *m, char **out, size_t *len)
{
    struct strbuf sb = {0};

    *out = NULL;
    if (len != NULL)
        *len = 0;
    if (m == NULL)
        return -EINVAL;
    sb_reserve(&sb, 1);
    for (const struct family *f = m->first_family; f != NULL; f = f->next) {
        sb_printf(&sb, "# HELP %s ", f->name);
        sb_help(&sb, f->help);
        sb_printf(&sb, "\n# TYPE %s %s\n", f->name, type_names[f->type]);
        for (const struct series *s = f->first; s != NULL; s = s->next)
            render_series(&sb, s);
    }
    if (sb.oom) {
        free(sb.buf);
        return -ENOMEM;
    }
    sb.buf[sb.len] = '\0';
    *out = sb.buf;
    if (len != NULL)
        *len = sb.len;
    return 0;
}

int metrics_escape_label(const char *value, char *buf, size_t len)
{
    size_t n = 0;

    if (buf == NULL || len == 0)
        return -ENOSPC;
    for (const char *p = value != NULL ? value : ""; *p; p++) {
        const char *esc = NULL;

        if (*p == '\\')
            esc = "\\\\";
        else if (*p == '"')
            esc = "\\\"";
        else if (*p == '\n')
            esc = "\\n";
        if (n + (esc != NULL ? 2 : 1) >= len) {
            buf[0] = '\0';
            return -ENOSPC;
        }
        if (esc != NULL) {
            memcpy(buf + n, esc, 2);
            n += 2;
        } else {
            buf[n++] = *p;
        }
    }
    buf[n] = '\0';
    return 0;
}
