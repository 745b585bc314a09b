/* metrics.h -- Prometheus counters, gauges and histograms, rendered as text.
 *
 * A registry holds series identified by name plus a label string (already
 * formatted, e.g. `route="/api/v1/users/{id}",code="200"`). Looking a series
 * up creates it on first use; the returned pointer stays valid until
 * metrics_free, so hot paths look up once and keep it. Label values that come
 * from outside must be escaped by the caller with metrics_escape_label. Loop
 * thread only. */
#ifndef RIPPLE_METRICS_H
#define RIPPLE_METRICS_H

#include <stddef.h>
#include <stdint.h>

#include <ripple/common.h>

struct metrics; /* opaque registry */
struct metrics_counter;
struct metrics_histogram;

#define METRICS_MAX_BUCKETS 16

CORE_MUST_CHECK int metrics_new(struct metrics **out);
void metrics_free(struct metrics *m);

/* Finds or creates the counter (name, labels). help is used the first time a
 * name is seen. labels may be "" (no labels). Returns NULL on ENOMEM, an invalid name,
 * or a name already registered with another type. */
struct metrics_counter *metrics_counter(struct metrics *m, const char *name, const char *help,
                                        const char *labels);
void metrics_counter_add(struct metrics_counter *c, uint64_t n);

/* Finds or creates a histogram with the given upper bounds (ascending,
 * at most METRICS_MAX_BUCKETS; +Inf is implied). Returns NULL on ENOMEM or
 * bad buckets. */
struct metrics_histogram *metrics_histogram(struct metrics *m, const char *name, const char *help,
                                            const char *labels, const double *bounds,
                                            size_t nbounds);
void metrics_histogram_observe(struct metrics_histogram *h, double v);

/* A gauge read at render time from fn(data). Returns 0 or -ENOMEM. */
typedef double (*metrics_gauge_cb)(void *data);
CORE_MUST_CHECK int metrics_gauge(struct metrics *m, const char *name, const char *help,
                                  const char *labels, metrics_gauge_cb fn, void *data);

/* Stops every gauge registered with data: its series are no longer rendered
 * (the owner of data is going away). Registering again revives them. */
void metrics_gauge_detach(struct metrics *m, const void *data);

/* Renders every series in the text exposition format 0.0.4, grouped by name
 * with one HELP and TYPE line each. *out is new: free() it. Returns 0 or
 * -ENOMEM. */
CORE_MUST_CHECK int metrics_render(struct metrics *m, char **out, size_t *len);

/* Escapes a label value (backslash, double quote, newline) into buf.
 * Returns 0, or -ENOSPC when it does not fit. */
CORE_MUST_CHECK int metrics_escape_label(const char *value, char *buf, size_t len);

#endif
