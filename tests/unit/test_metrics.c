/* test_metrics.c -- core/metrics: series lookup, Prometheus text rendering
 * (counters, cumulative histograms, callback gauges, one HELP/TYPE per name)
 * and label escaping. */
#include <criterion/criterion.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <ripple/metrics.h>

static struct metrics *m;

static void setup(void)
{
    cr_assert_eq(metrics_new(&m), 0);
}

static void teardown(void)
{
    metrics_free(m);
}

TestSuite(metrics, .init = setup, .fini = teardown);

/* Renders the registry; the caller free()s the text. */
static char *render(void)
{
    char *out = NULL;
    size_t len = 0;

    cr_assert_eq(metrics_render(m, &out, &len), 0);
    cr_assert_not_null(out);
    cr_assert_eq(strlen(out), len);
    return out;
}

static double read_gauge(void *data)
{
    return *(double *)data;
}

static int count_occurrences(const char *hay, const char *needle)
{
    int n = 0;

    for (const char *p = strstr(hay, needle); p != NULL; p = strstr(p + 1, needle))
        n++;
    return n;
}

Test(metrics, counter_render)
{
    struct metrics_counter *c =
        metrics_counter(m, "http_requests_total", "Requests served.", "route=\"/x\",code=\"200\"");
    struct metrics_counter *plain = metrics_counter(m, "ticks_total", "Ticks.", "");
    char *out;

    cr_assert_not_null(c);
    cr_assert_not_null(plain);
    cr_assert_eq(metrics_counter(m, "http_requests_total", "ignored", "route=\"/x\",code=\"200\""),
                 c, "lookup must return the same series");
    metrics_counter_add(c, 2);
    metrics_counter_add(c, 1);
    metrics_counter_add(NULL, 1); /* tolerated: a failed lookup returns NULL */
    out = render();
    cr_assert_str_eq(out, "# HELP http_requests_total Requests served.\n"
                          "# TYPE http_requests_total counter\n"
                          "http_requests_total{route=\"/x\",code=\"200\"} 3\n"
                          "# HELP ticks_total Ticks.\n"
                          "# TYPE ticks_total counter\n"
                          "ticks_total 0\n");
    free(out);
}

Test(metrics, help_and_type_once_per_name_series_grouped)
{
    char *out, *first, *second, *other;

    metrics_counter_add(metrics_counter(m, "a_total", "A.", "k=\"1\""), 1);
    metrics_counter_add(metrics_counter(m, "b_total", "B.", ""), 5);
    metrics_counter_add(metrics_counter(m, "a_total", "A again.", "k=\"2\""), 7);
    out = render();
    cr_assert_eq(count_occurrences(out, "# HELP a_total"), 1);
    cr_assert_eq(count_occurrences(out, "# TYPE a_total counter"), 1);
    cr_assert_eq(count_occurrences(out, "# HELP b_total"), 1);
    cr_assert_eq(count_occurrences(out, "A again."), 0, "the first help text wins");
    first = strstr(out, "a_total{k=\"1\"} 1\n");
    second = strstr(out, "a_total{k=\"2\"} 7\n");
    other = strstr(out, "b_total 5\n");
    cr_assert(first && second && other, "%s", out);
    cr_assert(first < second && second < other, "a_total's series are not together:\n%s", out);
    free(out);
}

Test(metrics, many_series_stay_distinct)
{
    struct metrics_counter *cs[300];
    char labels[32];
    char *out;

    for (int i = 0; i < 300; i++) {
        snprintf(labels, sizeof(labels), "n=\"%d\"", i);
        cs[i] = metrics_counter(m, "many_total", "Many.", labels);
        cr_assert_not_null(cs[i]);
        metrics_counter_add(cs[i], (uint64_t)i);
    }
    for (int i = 0; i < 300; i++) {
        snprintf(labels, sizeof(labels), "n=\"%d\"", i);
        cr_assert_eq(metrics_counter(m, "many_total", "Many.", labels), cs[i]);
    }
    out = render();
    cr_assert_eq(count_occurrences(out, "\nmany_total{"), 300);
    cr_assert_not_null(strstr(out, "many_total{n=\"299\"} 299\n"));
    free(out);
}

Test(metrics, histogram_buckets_cumulative_with_sum_and_count)
{
    static const double bounds[] = {0.1, 0.5, 1};
    struct metrics_histogram *h = metrics_histogram(m, "http_request_duration_seconds", "Latency.",
                                                    "route=\"/x\"", bounds, 3);
    char *out;

    cr_assert_not_null(h);
    metrics_histogram_observe(h, 0.05);
    metrics_histogram_observe(h, 0.3);
    metrics_histogram_observe(h, 0.5); /* le is inclusive */
    metrics_histogram_observe(h, 0.75);
    metrics_histogram_observe(h, 5);
    out = render();
    cr_assert_str_eq(out, "# HELP http_request_duration_seconds Latency.\n"
                          "# TYPE http_request_duration_seconds histogram\n"
                          "http_request_duration_seconds_bucket{route=\"/x\",le=\"0.1\"} 1\n"
                          "http_request_duration_seconds_bucket{route=\"/x\",le=\"0.5\"} 3\n"
                          "http_request_duration_seconds_bucket{route=\"/x\",le=\"1\"} 4\n"
                          "http_request_duration_seconds_bucket{route=\"/x\",le=\"+Inf\"} 5\n"
                          "http_request_duration_seconds_sum{route=\"/x\"} 6.6\n"
                          "http_request_duration_seconds_count{route=\"/x\"} 5\n");
    free(out);
}

Test(metrics, histogram_without_labels)
{
    static const double bounds[] = {0.005, 2.5};
    struct metrics_histogram *h = metrics_histogram(m, "lat_seconds", "L.", "", bounds, 2);
    char *out;

    metrics_histogram_observe(h, 0.001);
    out = render();
    cr_assert_not_null(strstr(out, "lat_seconds_bucket{le=\"0.005\"} 1\n"), "%s", out);
    cr_assert_not_null(strstr(out, "lat_seconds_bucket{le=\"2.5\"} 1\n"), "%s", out);
    cr_assert_not_null(strstr(out, "lat_seconds_bucket{le=\"+Inf\"} 1\n"), "%s", out);
    cr_assert_not_null(strstr(out, "lat_seconds_sum 0.001\n"), "%s", out);
    cr_assert_not_null(strstr(out, "lat_seconds_count 1\n"), "%s", out);
    free(out);
}

Test(metrics, histogram_rejects_bad_buckets_and_mismatches)
{
    static const double desc[] = {1, 0.5};
    static const double dup[] = {1, 1};
    static const double ok[] = {1, 2};
    static const double other[] = {1, 3};
    double many[METRICS_MAX_BUCKETS + 1];

    for (size_t i = 0; i < METRICS_MAX_BUCKETS + 1; i++)
        many[i] = (double)i;
    cr_assert_null(metrics_histogram(m, "h1", "H.", "", desc, 2));
    cr_assert_null(metrics_histogram(m, "h1", "H.", "", dup, 2));
    cr_assert_null(metrics_histogram(m, "h1", "H.", "", many, METRICS_MAX_BUCKETS + 1));
    cr_assert_not_null(metrics_histogram(m, "h1", "H.", "", many, METRICS_MAX_BUCKETS));
    cr_assert_not_null(metrics_histogram(m, "h2", "H.", "", ok, 2));
    cr_assert_null(metrics_histogram(m, "h2", "H.", "", other, 2));
    /* one name, one type */
    cr_assert_null(metrics_counter(m, "h2", "H.", ""));
    cr_assert_null(metrics_counter(m, "h2", "H.", "x=\"1\""));
    cr_assert_eq(metrics_gauge(m, "h2", "H.", "x=\"2\"", read_gauge, NULL), -EINVAL);
    cr_assert_null(metrics_counter(m, "bad name", "B.", ""));
    cr_assert_null(metrics_counter(m, "9lives", "B.", ""));
}

Test(metrics, gauge_callback_read_at_render)
{
    double backlog = 3;
    char *out;

    cr_assert_eq(metrics_gauge(m, "outbox_backlog", "Unpublished rows.", "", read_gauge, &backlog),
                 0);
    out = render();
    cr_assert_str_eq(out, "# HELP outbox_backlog Unpublished rows.\n"
                          "# TYPE outbox_backlog gauge\n"
                          "outbox_backlog 3\n");
    free(out);
    backlog = 0.25;
    out = render();
    cr_assert_not_null(strstr(out, "outbox_backlog 0.25\n"), "%s", out);
    free(out);
    cr_assert_lt(metrics_gauge(m, "outbox_backlog", "U.", "", NULL, NULL), 0);
    cr_assert_eq(metrics_gauge(m, "bad name", "U.", "", read_gauge, &backlog), -EINVAL);
}

Test(metrics, help_text_escaped)
{
    char *out;

    cr_assert_not_null(metrics_counter(m, "x_total", "line one\nback\\slash", ""));
    out = render();
    cr_assert_not_null(strstr(out, "# HELP x_total line one\\nback\\\\slash\n"), "%s", out);
    free(out);
}

Test(metrics, escape_label)
{
    char buf[64];
    char small[4];

    cr_assert_eq(metrics_escape_label("a\"b\\c\nd", buf, sizeof(buf)), 0);
    cr_assert_str_eq(buf, "a\\\"b\\\\c\\nd");
    cr_assert_eq(metrics_escape_label("plain/path-{id}", buf, sizeof(buf)), 0);
    cr_assert_str_eq(buf, "plain/path-{id}");
    cr_assert_eq(metrics_escape_label("", buf, sizeof(buf)), 0);
    cr_assert_str_eq(buf, "");
    cr_assert_eq(metrics_escape_label("abc", small, sizeof(small)), 0); /* exact fit */
    cr_assert_str_eq(small, "abc");
    cr_assert_eq(metrics_escape_label("abcd", small, sizeof(small)), -ENOSPC);
    cr_assert_eq(metrics_escape_label("ab\"", small, sizeof(small)), -ENOSPC);
    cr_assert_eq(metrics_escape_label("a", small, 0), -ENOSPC);
}

Test(metrics, escaped_label_renders)
{
    char value[64], labels[96];
    char *out;

    cr_assert_eq(metrics_escape_label("say \"hi\"", value, sizeof(value)), 0);
    snprintf(labels, sizeof(labels), "target=\"%s\"", value);
    metrics_counter_add(metrics_counter(m, "calls_total", "Calls.", labels), 1);
    out = render();
    cr_assert_not_null(strstr(out, "calls_total{target=\"say \\\"hi\\\"\"} 1\n"), "%s", out);
    free(out);
}

Test(metrics, empty_registry_renders_empty)
{
    char *out = render();

    cr_assert_str_eq(out, "");
    free(out);
}
