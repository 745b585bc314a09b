/* test_http_client.c -- core/http_client against an in-process upstream.
 *
 * Each test runs a private uv_loop_t holding the client and a raw uv_tcp
 * upstream on 127.0.0.1 (port 0). The test scripts the upstream's answer to
 * each request it receives: a status and body, possibly late, or no answer at
 * all (hang, close, reset). The upstream records what arrives and when, so the
 * tests count attempts and measure backoff gaps where they happen; "down" is a
 * port with nothing listening. Timing bounds are strict below (less 1-2 ms for
 * libuv's millisecond clock) and loose above, since machines are noisy. Every
 * test closes the client and the upstream and asserts uv_loop_close() == 0.
 * Backoff gaps measured at the upstream get 25 ms of slack below: the
 * client's timer starts before the request reaches the upstream. */
#include <criterion/criterion.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include <uv.h>

#include <ripple/http_client.h>
#include <ripple/log.h>
#include <ripple/metrics.h>

#define NS_PER_MS 1000000.0
#define UP_MAX_REQUESTS 32
#define UP_BUF_BYTES 65536
#define FX_URLS 16

/* RIPPLE_TIME_SLACK scales the loose bounds (and the one lower bound that
 * is measured at the upstream rather than at the client) for slow runs:
 * make check-valgrind sets it. */
static double slack(void)
{
    const char *s = getenv("RIPPLE_TIME_SLACK");
    double v = s ? strtod(s, NULL) : 1.0;

    return v >= 1.0 ? v : 1.0;
}

/* ---------------------------------------------------------------------------
 * The scripted upstream
 * ------------------------------------------------------------------------- */

enum up_action {
    UP_RESPOND, /* answer status + body, after delay_ms */
    UP_HANG,    /* read the request, never answer */
    UP_CLOSE,   /* read the request, close the connection (FIN) */
    UP_RESET,   /* read the request, reset the connection (RST) */
};

struct up_reply {
    enum up_action action;
    int status;
    const char *body; /* NULL: body_len bytes of 'x' */
    size_t body_len;
    unsigned delay_ms;
};

struct up_conn;

struct upstream {
    uv_tcp_t listener;
    int listening;
    unsigned port;
    struct up_conn *conns;
    struct up_reply script[UP_MAX_REQUESTS]; /* the reply to request i */
    size_t nscript;
    struct up_reply dflt; /* the reply past the script */
    size_t count;         /* requests received */
    size_t accepted;      /* connections accepted */
    uint64_t arrival_ns[UP_MAX_REQUESTS];
    char method[UP_MAX_REQUESTS][8];
    char path[UP_MAX_REQUESTS][64];
    char head[2048]; /* the last request's head, NUL-terminated */
    char *body;      /* the last request's body, new */
    size_t body_len;
};

struct up_conn {
    uv_tcp_t tcp;
    uv_timer_t timer; /* a late reply */
    struct upstream *up;
    struct up_conn *prev, *next;
    struct up_reply late;
    int open_handles, closing, busy; /* busy: a request is being answered */
    int head_req;                    /* answer without the body bytes */
    size_t len;
    char buf[UP_BUF_BYTES];
};

struct up_write {
    uv_write_t req;
    char *data;
};

static void up_on_conn_closed(uv_handle_t *h)
{
    struct up_conn *k = h->data;

    if (--k->open_handles == 0)
        free(k);
}

static void up_conn_close(struct up_conn *k, int reset)
{
    if (k->closing)
        return;
    k->closing = 1;
    if (k->prev)
        k->prev->next = k->next;
    else
        k->up->conns = k->next;
    if (k->next)
        k->next->prev = k->prev;
    uv_close((uv_handle_t *)&k->timer, up_on_conn_closed);
    if (!reset || uv_tcp_close_reset(&k->tcp, up_on_conn_closed) != 0)
        uv_close((uv_handle_t *)&k->tcp, up_on_conn_closed);
}

static void up_on_written(uv_write_t *req, int status)
{
    struct up_write *w = container_of(req, struct up_write, req);

    (void)status;
    free(w->data);
    free(w);
}

static void up_send(struct up_conn *k, const struct up_reply *r)
{
    size_t len = r->body ? strlen(r->body) : r->body_len;
    char head[160];
    struct up_write *w;
    uv_buf_t buf;
    int n = snprintf(head, sizeof(head),
                     "HTTP/1.1 %d Scripted\r\nContent-Type: text/plain\r\n"
                     "Content-Length: %zu\r\n\r\n",
                     r->status, len);

    cr_assert(n > 0 && (size_t)n < sizeof(head));
    w = malloc(sizeof(*w));
    cr_assert_not_null(w);
    w->data = malloc((size_t)n + len);
    cr_assert_not_null(w->data);
    memcpy(w->data, head, (size_t)n);
    if (r->body)
        memcpy(w->data + n, r->body, len);
    else
        memset(w->data + n, 'x', len);
    if (k->head_req)
        len = 0; /* Content-Length as for a GET, no body */
    buf = uv_buf_init(w->data, (unsigned)((size_t)n + len));
    if (uv_write(&w->req, (uv_stream_t *)&k->tcp, &buf, 1, up_on_written) != 0) {
        free(w->data);
        free(w);
    }
}

/* The length of the request head ending in CRLF CRLF, or 0 while incomplete. */
static size_t up_head_len(const char *buf, size_t len)
{
    for (size_t i = 0; i + 4 <= len; i++) {
        if (memcmp(buf + i, "\r\n\r\n", 4) == 0)
            return i + 4;
    }
    return 0;
}

static size_t up_content_length(const char *head, size_t hlen)
{
    const char *p = head, *end = head + hlen;

    while (p < end) {
        const char *eol = p;

        while (eol + 1 < end && !(eol[0] == '\r' && eol[1] == '\n'))
            eol++;
        if (eol - p > 15 && strncasecmp(p, "content-length:", 15) == 0)
            return strtoul(p + 15, NULL, 10); /* stops at the CR */
        p = eol + 2;
    }
    return 0;
}

/* Records one complete request and returns the scripted reply to it. */
static struct up_reply up_record(struct upstream *up, const char *buf, size_t hlen, size_t total)
{
    size_t i = up->count++;
    size_t n = hlen < sizeof(up->head) - 1 ? hlen : sizeof(up->head) - 1;

    memcpy(up->head, buf, n);
    up->head[n] = '\0';
    if (i < UP_MAX_REQUESTS) {
        up->arrival_ns[i] = uv_hrtime();
        cr_assert_eq(sscanf(up->head, "%7s %63s", up->method[i], up->path[i]), 2);
    }
    free(up->body);
    up->body_len = total - hlen;
    up->body = malloc(up->body_len + 1);
    cr_assert_not_null(up->body);
    memcpy(up->body, buf + hlen, up->body_len);
    up->body[up->body_len] = '\0';
    return i < up->nscript ? up->script[i] : up->dflt;
}

static void up_parse(struct up_conn *k);

static void up_on_late(uv_timer_t *t)
{
    struct up_conn *k = t->data;

    k->busy = 0;
    up_send(k, &k->late);
    up_parse(k);
}

static void up_act(struct up_conn *k, const struct up_reply *r)
{
    switch (r->action) {
    case UP_HANG:
        k->busy = 1;
        break;
    case UP_CLOSE:
        up_conn_close(k, 0);
        break;
    case UP_RESET:
        up_conn_close(k, 1);
        break;
    case UP_RESPOND:
        if (r->delay_ms == 0) {
            up_send(k, r);
            break;
        }
        k->busy = 1;
        k->late = *r;
        uv_timer_start(&k->timer, up_on_late, r->delay_ms, 0);
        break;
    }
}

static void up_parse(struct up_conn *k)
{
    while (!k->closing && !k->busy) {
        size_t hlen = up_head_len(k->buf, k->len), total;
        struct up_reply r;

        if (hlen == 0)
            return;
        total = hlen + up_content_length(k->buf, hlen);
        if (k->len < total)
            return;
        k->head_req = strncmp(k->buf, "HEAD ", 5) == 0;
        r = up_record(k->up, k->buf, hlen, total);
        memmove(k->buf, k->buf + total, k->len - total);
        k->len -= total;
        up_act(k, &r);
    }
}

static void up_on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    struct up_conn *k = h->data;

    (void)suggested;
    *buf = uv_buf_init(k->buf + k->len, (unsigned)(sizeof(k->buf) - k->len));
}

static void up_on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct up_conn *k = s->data;

    (void)buf;
    if (nread < 0) {
        up_conn_close(k, 0);
        return;
    }
    k->len += (size_t)nread;
    up_parse(k);
}

static void up_on_connection(uv_stream_t *server, int status)
{
    struct upstream *up = server->data;
    struct up_conn *k;

    if (status < 0)
        return;
    k = calloc(1, sizeof(*k));
    cr_assert_not_null(k);
    k->up = up;
    cr_assert_eq(uv_tcp_init(server->loop, &k->tcp), 0);
    cr_assert_eq(uv_timer_init(server->loop, &k->timer), 0);
    k->tcp.data = k;
    k->timer.data = k;
    k->open_handles = 2;
    k->next = up->conns;
    if (up->conns)
        up->conns->prev = k;
    up->conns = k;
    if (uv_accept(server, (uv_stream_t *)&k->tcp) != 0) {
        up_conn_close(k, 0);
        return;
    }
    up->accepted++;
    cr_assert_eq(uv_read_start((uv_stream_t *)&k->tcp, up_on_alloc, up_on_read), 0);
}

static void up_start(uv_loop_t *loop, struct upstream *up)
{
    struct sockaddr_storage ss;
    struct sockaddr_in addr;
    int len = sizeof(ss);

    cr_assert_eq(uv_ip4_addr("127.0.0.1", 0, &addr), 0);
    cr_assert_eq(uv_tcp_init(loop, &up->listener), 0);
    up->listener.data = up;
    cr_assert_eq(uv_tcp_bind(&up->listener, (const struct sockaddr *)&addr, 0), 0);
    cr_assert_eq(uv_listen((uv_stream_t *)&up->listener, 64, up_on_connection), 0);
    cr_assert_eq(uv_tcp_getsockname(&up->listener, (struct sockaddr *)&ss, &len), 0);
    up->port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
    up->listening = 1;
    up->dflt = (struct up_reply){.status = 200, .body = "ok"};
}

/* Stops listening and closes every connection: the port is down from now on. */
static void up_stop(struct upstream *up)
{
    if (up->listening) {
        up->listening = 0;
        uv_close((uv_handle_t *)&up->listener, NULL);
    }
    while (up->conns != NULL)
        up_conn_close(up->conns, 0);
}

/* A port nothing listens on: bound once, then closed. */
static unsigned down_port(void)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t alen = sizeof(a);
    int fd = socket(AF_INET, SOCK_STREAM, 0);

    cr_assert(fd >= 0);
    cr_assert_eq(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    cr_assert_eq(getsockname(fd, (struct sockaddr *)&a, &alen), 0);
    close(fd);
    return ntohs(a.sin_port);
}

/* ---------------------------------------------------------------------------
 * The fixture: loop, client, metrics, upstream
 * ------------------------------------------------------------------------- */

/* What one request's callback saw. */
struct got {
    int calls;
    int status, error, from_cache;
    int body_nul; /* body[body_len] was '\0' */
    unsigned attempts;
    size_t body_len;
    char body[256];
    char error_msg[128];
    uint64_t at_ns;
    int close_client; /* close the client from inside the callback */
};

static struct {
    uv_loop_t loop;
    uv_timer_t guard;
    int guard_fired;
    struct metrics *metrics;
    struct http_client *c;
    int closing, closed;
    struct upstream up;
    char urls[FX_URLS][128];
    unsigned nurl;
} fx;

static struct http_client_config base_cfg(void)
{
    return (struct http_client_config){
        .timeout_ms = 1000,
        .attempts = 1,
        .deadline_ms = 5000,
        .backoff_ms = 20,
        .breaker_failures = 100,
        .breaker_cooldown_ms = 1000,
        .max_response_bytes = 1 << 20,
        .max_cache_entries = 100,
    };
}

static void on_guard(uv_timer_t *t)
{
    (void)t;
    fx.guard_fired = 1;
}

/* Runs the loop until cond holds or ms (loop time) have passed. */
#define RUN_UNTIL(cond, ms)                                                                        \
    do {                                                                                           \
        fx.guard_fired = 0;                                                                        \
        uv_update_time(&fx.loop);                                                                  \
        uv_timer_start(&fx.guard, on_guard, (ms), 0);                                              \
        while (!(cond) && !fx.guard_fired)                                                         \
            uv_run(&fx.loop, UV_RUN_ONCE);                                                         \
        uv_timer_stop(&fx.guard);                                                                  \
    } while (0)

static void run_for(unsigned ms)
{
    RUN_UNTIL(0, ms);
}

static void on_client_closed(void *data)
{
    (void)data;
    fx.closed++;
}

static void fx_close_client(void)
{
    if (!fx.closing) {
        fx.closing = 1;
        http_client_close(fx.c, on_client_closed, NULL);
    }
    RUN_UNTIL(fx.closed, 2000);
    cr_assert_eq(fx.closed, 1, "http_client_close's done callback fired %d times", fx.closed);
    fx.c = NULL;
}

static void fx_start(const struct http_client_config *cfg)
{
    memset(&fx, 0, sizeof(fx));
    cr_assert_eq(uv_loop_init(&fx.loop), 0);
    cr_assert_eq(uv_timer_init(&fx.loop, &fx.guard), 0);
    cr_assert_eq(metrics_new(&fx.metrics), 0);
    log_set_level(LOG_LEVEL_ERROR); /* the breaker's warnings would drown the report */
    cr_assert_eq(http_client_new(&fx.loop, cfg, fx.metrics, &fx.c), 0);
    up_start(&fx.loop, &fx.up);
}

static void print_handle(uv_handle_t *h, void *arg)
{
    (void)arg;
    fprintf(stderr, "left open: %s handle %p (active %d, closing %d)\n",
            uv_handle_type_name(uv_handle_get_type(h)), (void *)h, uv_is_active(h),
            uv_is_closing(h));
}

/* Closes the client (unless the test did), the upstream and the loop. */
static void fx_finish(void)
{
    int rc;

    fx_close_client();
    up_stop(&fx.up);
    uv_close((uv_handle_t *)&fx.guard, NULL);
    for (int i = 0; i < 100 && uv_loop_alive(&fx.loop); i++)
        uv_run(&fx.loop, UV_RUN_NOWAIT);
    rc = uv_loop_close(&fx.loop);
    if (rc != 0)
        uv_walk(&fx.loop, print_handle, NULL);
    metrics_free(fx.metrics);
    free(fx.up.body);
    cr_assert_eq(rc, 0, "uv_loop_close: %s", uv_strerror(rc));
}

static const char *url_at(unsigned port, const char *path)
{
    char *u = fx.urls[fx.nurl++ % FX_URLS];

    cr_assert(snprintf(u, sizeof(fx.urls[0]), "http://127.0.0.1:%u%s", port, path) <
              (int)sizeof(fx.urls[0]));
    return u;
}

static struct http_client_request req_to(const char *method, unsigned port, const char *path)
{
    return (struct http_client_request){
        .target = "t",
        .method = method,
        .url = url_at(port, path),
        .idempotent = strcmp(method, "POST") != 0,
    };
}

static struct http_client_request get(const char *path)
{
    return req_to("GET", fx.up.port, path);
}

static void on_got(const struct http_client_response *res, void *data)
{
    struct got *g = data;
    size_t n = res->body_len < sizeof(g->body) - 1 ? res->body_len : sizeof(g->body) - 1;

    if (g->calls++ > 0) { /* keep the first answer; the test reports the count */
        fprintf(stderr, "a callback fired again: status %d, error %d (%s)\n", res->status,
                res->error, res->error_msg ? res->error_msg : "(null)");
        return;
    }
    g->at_ns = uv_hrtime();
    g->status = res->status;
    g->error = res->error;
    g->from_cache = res->from_cache;
    g->attempts = res->attempts;
    g->body_len = res->body_len;
    g->body_nul = res->body != NULL && res->body[res->body_len] == '\0';
    if (res->body != NULL)
        memcpy(g->body, res->body, n);
    g->body[n] = '\0';
    snprintf(g->error_msg, sizeof(g->error_msg), "%s", res->error_msg ? res->error_msg : "(null)");
    if (g->close_client && !fx.closing) {
        fx.closing = 1;
        http_client_close(fx.c, on_client_closed, NULL);
    }
}

static void send_req(const struct http_client_request *r, struct got *g)
{
    cr_assert_eq(http_client_send(fx.c, r, on_got, g), 0);
    cr_assert_eq(g->calls, 0, "the callback fired before http_client_send returned");
}

/* Sends r, runs until its callback fired, and returns the elapsed ms. */
static double fetch(const struct http_client_request *r, struct got *g)
{
    uint64_t t0;

    memset(g, 0, sizeof(*g));
    uv_update_time(&fx.loop);
    t0 = uv_hrtime();
    send_req(r, g);
    RUN_UNTIL(g->calls > 0, 5000);
    cr_assert_eq(g->calls, 1, "%s: no answer within 5 s", r->url);
    cr_assert(g->body_nul, "the body is not NUL-terminated");
    return (double)(g->at_ns - t0) / NS_PER_MS;
}

static int total_calls(const struct got *g, size_t n)
{
    int sum = 0;

    for (size_t i = 0; i < n; i++)
        sum += g[i].calls;
    return sum;
}

/* ms between the upstream's arrivals of requests i and i + 1 */
static double gap_ms(size_t i)
{
    return (double)(fx.up.arrival_ns[i + 1] - fx.up.arrival_ns[i]) / NS_PER_MS;
}

/* Asserts that the rendered metrics hold the line "<series> <value>". */
static void assert_metric(const char *series, const char *value)
{
    char *out = NULL, want[256];
    size_t len = 0, wlen;
    int found = 0;

    cr_assert_eq(metrics_render(fx.metrics, &out, &len), 0);
    wlen = (size_t)snprintf(want, sizeof(want), "%s %s\n", series, value);
    for (const char *p = out; p != NULL && !found; p = strchr(p, '\n')) {
        if (*p == '\n')
            p++;
        found = strncmp(p, want, wlen) == 0;
    }
    cr_expect(found, "no metrics line \"%s %s\" in:\n%s", series, value, out);
    free(out);
}

static void assert_count(const char *target, const char *result, const char *value)
{
    char series[160];

    snprintf(series, sizeof(series), "http_client_requests_total{target=\"%s\",result=\"%s\"}",
             target, result);
    assert_metric(series, value);
}

static void assert_gauge(const char *target, const char *value)
{
    char series[96];

    snprintf(series, sizeof(series), "circuit_state{target=\"%s\"}", target);
    assert_metric(series, value);
}

static void script(size_t i, struct up_reply r)
{
    cr_assert(i < UP_MAX_REQUESTS);
    fx.up.script[i] = r;
    if (fx.up.nscript < i + 1)
        fx.up.nscript = i + 1;
}

TestSuite(http_client, .timeout = 10);

/* ---------------------------------------------------------------------------
 * Answers
 * ------------------------------------------------------------------------- */

Test(http_client, ok_200_body_once_on_reused_connection)
{
    struct http_client_config cfg = base_cfg();
    struct http_client_request r;
    struct got g;

    fx_start(&cfg);
    fx.up.dflt = (struct up_reply){.status = 200, .body = "hello, ripple"};
    r = get("/hello?x=1");
    fetch(&r, &g);
    run_for(50); /* nothing else arrives for this request */
    cr_assert_eq(g.calls, 1);
    cr_assert_eq(g.error, 0, "error %d (%s)", g.error, g.error_msg);
    cr_assert_str_eq(g.error_msg, "");
    cr_assert_eq(g.status, 200);
    cr_assert_eq(g.body_len, 13);
    cr_assert_str_eq(g.body, "hello, ripple");
    cr_assert_eq(g.from_cache, 0);
    cr_assert_eq(g.attempts, 1);
    cr_assert_eq(fx.up.count, 1);
    cr_assert_str_eq(fx.up.method[0], "GET");
    cr_assert_str_eq(fx.up.path[0], "/hello?x=1");

    r = get("/again");
    fetch(&r, &g);
    cr_assert_eq(g.status, 200);
    cr_assert_eq(fx.up.count, 2);
    cr_assert_eq(fx.up.accepted, 1, "the keep-alive connection was not reused");
    assert_count("t", "2xx", "2");
    fx_finish();
}

Test(http_client, post_body_and_headers_arrive_intact)
{
    struct http_client_config cfg = base_cfg();
    struct http_client_request r;
    char body[3000];
    struct got g;
    double ms;

    for (size_t i = 0; i < sizeof(body); i++)
        body[i] = (char)(i * 7 % 251); /* NULs included */
    fx_start(&cfg);
    fx.up.dflt = (struct up_reply){.status = 201, .body = "created"};
    r = req_to("POST", fx.up.port, "/orders");
    r.headers[0] = "X-Ripple-Test: yes";
    r.headers[1] = "Content-Type: application/octet-stream";
    r.body = body;
    r.body_len = sizeof(body);
    ms = fetch(&r, &g);
    cr_assert_eq(g.error, 0, "error %d (%s)", g.error, g.error_msg);
    cr_assert_eq(g.status, 201);
    cr_assert_str_eq(g.body, "created");
    cr_assert_eq(fx.up.count, 1);
    cr_assert_str_eq(fx.up.method[0], "POST");
    cr_assert_str_eq(fx.up.path[0], "/orders");
    cr_assert_eq(fx.up.body_len, sizeof(body));
    cr_assert_eq(memcmp(fx.up.body, body, sizeof(body)), 0, "the body arrived altered");
    cr_assert_not_null(strstr(fx.up.head, "\r\nX-Ripple-Test: yes\r\n"), "%s", fx.up.head);
    cr_assert_not_null(strstr(fx.up.head, "\r\nContent-Type: application/octet-stream\r\n"), "%s",
                       fx.up.head);
    cr_assert_null(strstr(fx.up.head, "Expect:"), "%s", fx.up.head);
    cr_assert(ms < 900 * slack(), "took %.1f ms (a 100-continue wait?)", ms);
    fx_finish();
}

/* ---------------------------------------------------------------------------
 * Timeouts and the deadline
 * ------------------------------------------------------------------------- */

Test(http_client, timeout_fires_at_timeout_ms)
{
    struct http_client_config cfg = base_cfg();
    struct http_client_request r;
    struct got g;
    double ms;

    cfg.timeout_ms = 200;
    fx_start(&cfg);
    fx.up.dflt = (struct up_reply){.status = 200, .body = "late", .delay_ms = 1000};
    r = get("/slow");
    ms = fetch(&r, &g);
    cr_assert_eq(g.error, -ETIMEDOUT, "error %d (%s)", g.error, g.error_msg);
    cr_assert_eq(g.status, 0);
    cr_assert_eq(g.attempts, 1);
    cr_assert_eq(fx.up.count, 1);
    cr_assert(ms >= 200.0, "timed out after %.1f ms < timeout_ms 200", ms);
    cr_assert(ms <= 600.0 * slack(), "timed out after %.1f ms", ms);
    assert_count("t", "timeout", "1");
    fx_finish();
}

Test(http_client, timeout_applies_to_each_attempt)
{
    struct http_client_config cfg = base_cfg();
    struct http_client_request r;
    struct got g;
    double ms;

    cfg.timeout_ms = 200;
    cfg.attempts = 3;
    cfg.backoff_ms = 20;
    fx_start(&cfg);
    fx.up.dflt = (struct up_reply){.action = UP_HANG};
    r = get("/hang");
    ms = fetch(&r, &g);
    cr_assert_eq(g.error, -ETIMEDOUT, "error %d (%s)", g.error, g.error_msg);
    cr_assert_eq(g.attempts, 3);
    cr_assert_eq(fx.up.count, 3);
    /* 3 timeouts and backoffs of at least 10 and 20 ms */
    cr_assert(ms >= 3 * 200 + 10 + 20 - 2, "took %.1f ms", ms);
    cr_assert(ms <= (3 * 200 + 20 + 40 + 600) * slack(), "took %.1f ms", ms);
    for (size_t k = 1; k <= 2; k++) {
        double gap = gap_ms(k - 1), lo = 200 + 10.0 * (1u << (k - 1)) - 2;

        cr_assert(gap >= lo - 25 * slack(), "gap %zu: %.1f ms < %.1f", k, gap, lo);
        cr_assert(gap <= (lo + 20.0 * (1u << (k - 1)) + 300) * slack(), "gap %zu: %.1f ms", k, gap);
    }
    fx_finish();
}

Test(http_client, deadline_stops_retries_early)
{
    struct http_client_config cfg = base_cfg();
    struct http_client_request r;
    struct got g;
    double ms;

    cfg.timeout_ms = 200;
    cfg.attempts = 5;
    cfg.backoff_ms = 20;
    cfg.deadline_ms = 300;
    fx_start(&cfg);
    fx.up.dflt = (struct up_reply){.action = UP_HANG};
    r = get("/hang");
    ms = fetch(&r, &g);
    cr_assert_eq(g.error, -ETIMEDOUT, "error %d (%s)", g.error, g.error_msg);
    cr_assert(g.attempts >= 1 && g.attempts < 5, "attempts %u", g.attempts);
    cr_assert_eq(fx.up.count, g.attempts);
    cr_assert(ms >= 200.0, "took %.1f ms", ms);
    cr_assert(ms <= (300.0 + 150.0) * slack(), "took %.1f ms past a 300 ms deadline", ms);
    run_for(300);
    cr_assert_eq(g.calls, 1);
    cr_assert_eq(fx.up.count, g.attempts, "an attempt after the answer");
    fx_finish();
}

Test(http_client, deadline_caps_the_attempt_timeout)
{
    struct http_client_config cfg = base_cfg();
    struct http_client_request r;
    struct got g;
    double ms;

    cfg.timeout_ms = 1000;
    cfg.attempts = 3;
    cfg.deadline_ms = 250;
    fx_start(&cfg);
    fx.up.dflt = (struct up_reply){.action = UP_HANG};
    r = get("/hang");
    ms = fetch(&r, &g);
    cr_assert_eq(g.error, -ETIMEDOUT, "error %d (%s)", g.error, g.error_msg);
    cr_assert_eq(g.attempts, 1);
    cr_assert(ms >= 250.0 - 1, "took %.1f ms", ms);
    cr_assert(ms <= (250.0 + 200.0) * slack(), "took %.1f ms, deadline 250", ms);
    fx_finish();
}

/* ---------------------------------------------------------------------------
 * Retries
 * ------------------------------------------------------------------------- */

Test(http_client, retries_503_with_growing_backoff)
{
    struct http_client_config cfg = base_cfg();
    struct http_client_request r;
    struct got g;

    cfg.attempts = 4;
    cfg.backoff_ms = 60;
    fx_start(&cfg);
    fx.up.dflt = (struct up_reply){.status = 503, .body = "busy"};
    r = get("/busy");
    fetch(&r, &g);
    cr_assert_eq(g.error, 0, "error %d (%s)", g.error, g.error_msg);
    cr_assert_eq(g.status, 503);
    cr_assert_str_eq(g.body, "busy");
    cr_assert_eq(g.attempts, 4);
    cr_assert_eq(fx.up.count, 4);
    /* the k-th wait is jittered in [60/2 * 2^(k-1), 60 * 2^(k-1)] */
    for (size_t k = 1; k <= 3; k++) {
        double gap = gap_ms(k - 1), lo = 30.0 * (1u << (k - 1));

        cr_assert(gap >= lo - 1 - 25 * (slack() - 1), "gap %zu: %.1f ms < %.1f", k, gap, lo);
        cr_assert(gap <= (2 * lo + 150) * slack(), "gap %zu: %.1f ms > %.1f", k, gap, 2 * lo + 150);
    }
    cr_assert(gap_ms(2) > gap_ms(0), "gaps %.1f, %.1f, %.1f ms do not grow", gap_ms(0), gap_ms(1),
              gap_ms(2));
    run_for(300);
    cr_assert_eq(fx.up.count, 4, "an attempt past cfg.attempts");
    assert_count("t", "5xx", "4");
    fx_finish();
}

Test(http_client, retries_502_503_504_then_succeeds)
{
    struct http_client_config cfg = base_cfg();
    struct http_client_request r;
    struct got g;

    cfg.attempts = 4;
    cfg.backoff_ms = 10;
    fx_start(&cfg);
    script(0, (struct up_reply){.status = 502, .body = "a"});
    script(1, (struct up_reply){.status = 503, .body = "b"});
    script(2, (struct up_reply){.status = 504, .body = "c"});
    fx.up.dflt = (struct up_reply){.status = 200, .body = "finally"};
    r = get("/flaky");
    fetch(&r, &g);
    cr_assert_eq(g.error, 0, "error %d (%s)", g.error, g.error_msg);
    cr_assert_eq(g.status, 200);
    cr_assert_str_eq(g.body, "finally");
    cr_assert_eq(g.attempts, 4);
    cr_assert_eq(fx.up.count, 4);
    fx_finish();
}

Test(http_client, no_retry_for_non_idempotent_post)
{
    struct http_client_config cfg = base_cfg();
    struct http_client_request r;
    struct got g;

    cfg.attempts = 3;
    cfg.backoff_ms = 10;
    cfg.timeout_ms = 150;
    fx_start(&cfg);
    script(0, (struct up_reply){.status = 503, .body = "busy"});
    fx.up.dflt = (struct up_reply){.action = UP_HANG};

    r = req_to("POST", fx.up.port, "/charge");
    r.body = "{}";
    r.body_len = 2;
    fetch(&r, &g);
    cr_assert_eq(g.status, 503);
    cr_assert_eq(g.attempts, 1);
    run_for(100);
    cr_assert_eq(fx.up.count, 1, "a POST was retried on 503");

    r = req_to("POST", down_port(), "/charge");
    fetch(&r, &g);
    cr_assert_eq(g.error, -ECONNREFUSED, "error %d (%s)", g.error, g.error_msg);
    cr_assert_eq(g.attempts, 1, "a POST was retried on a connect error");

    r = req_to("POST", fx.up.port, "/charge");
    fetch(&r, &g);
    cr_assert_eq(g.error, -ETIMEDOUT, "error %d (%s)", g.error, g.error_msg);
    cr_assert_eq(g.attempts, 1);
    run_for(100);
    cr_assert_eq(fx.up.count, 2, "a POST was retried on a timeout");
    fx_finish();
}

Test(http_client, no_retry_on_other_statuses)
{
    static const int statuses[] = {500, 404, 400, 501, 429, 409};
    struct http_client_config cfg = base_cfg();
    struct http_client_request r;
    struct got g;

    cfg.attempts = 3;
    cfg.backoff_ms = 10;
    fx_start(&cfg);
    for (size_t i = 0; i < sizeof(statuses) / sizeof(statuses[0]); i++)
        script(i, (struct up_reply){.status = statuses[i], .body = "no"});
    for (size_t i = 0; i < sizeof(statuses) / sizeof(statuses[0]); i++) {
        r = get("/x");
        fetch(&r, &g);
        cr_assert_eq(g.error, 0, "error %d (%s)", g.error, g.error_msg);
        cr_assert_eq(g.status, statuses[i]);
        cr_assert_str_eq(g.body, "no");
        cr_assert_eq(g.attempts, 1, "%d retried", statuses[i]);
        run_for(60); /* a retry would come within 10 ms */
        cr_assert_eq(fx.up.count, i + 1, "%d retried", statuses[i]);
    }
    fx_finish();
}

Test(http_client, retries_on_connection_reset)
{
    struct http_client_config cfg = base_cfg();
    struct http_client_request r;
    struct got g;

    cfg.attempts = 3;
    cfg.backoff_ms = 10;
    fx_start(&cfg);
    for (size_t i = 0; i < 5; i++)
        script(i, (struct up_reply){.action = UP_RESET});
    fx.up.dflt = (struct up_reply){.status = 200, .body = "back"};

    r = get("/reset");
    fetch(&r, &g);
    cr_assert(g.error == -ECONNREFUSED || g.error == -EIO, "error %d (%s)", g.error, g.error_msg);
    cr_assert_eq(g.status, 0);
    cr_assert_eq(g.attempts, 3);
    cr_assert_eq(fx.up.count, 3);

    r = get("/reset");
    fetch(&r, &g);
    cr_assert_eq(g.error, 0, "error %d (%s)", g.error, g.error_msg);
    cr_assert_eq(g.status, 200);
    cr_assert_str_eq(g.body, "back");
    cr_assert_eq(g.attempts, 3);
    cr_assert_eq(fx.up.count, 6);
    fx_finish();
}

Test(http_client, retries_on_close_without_answer)
{
    struct http_client_config cfg = base_cfg();
    struct http_client_request r;
    struct got g;

    cfg.attempts = 3;
    cfg.backoff_ms = 10;
    fx_start(&cfg);
    script(0, (struct up_reply){.action = UP_CLOSE});
    script(1, (struct up_reply){.action = UP_CLOSE});
    fx.up.dflt = (struct up_reply){.status = 200, .body = "back"};
    r = get("/eof");
    fetch(&r, &g);
    cr_assert_eq(g.error, 0, "error %d (%s)", g.error, g.error_msg);
    cr_assert_eq(g.status, 200);
    cr_assert_eq(g.attempts, 3);
    cr_assert_eq(fx.up.count, 3);
    fx_finish();
}

Test(http_client, retries_on_connect_refused)
{
    struct http_client_config cfg = base_cfg();
    struct http_client_request r;
    struct got g;
    double ms;

    cfg.attempts = 3;
    cfg.backoff_ms = 40;
    fx_start(&cfg);
    r = req_to("GET", down_port(), "/down");
    ms = fetch(&r, &g);
    cr_assert_eq(g.error, -ECONNREFUSED, "error %d (%s)", g.error, g.error_msg);
    cr_assert_str_neq(g.error_msg, "");
    cr_assert_eq(g.status, 0);
    cr_assert_eq(g.attempts, 3);
    cr_assert(ms >= 20 + 40 - 2, "3 attempts in %.1f ms: backoff too short", ms);
    cr_assert(ms <= (40 + 80 + 400) * slack(), "took %.1f ms", ms);
    assert_count("t", "connect_error", "3");
    fx_finish();
}

/* A POST whose keep-alive connection dies after the request went out must
 * not reach the upstream twice (libcurl itself re-sends a request on a fresh
 * connection when a reused one dies before any answer byte). */
static void post_on_dying_connection(enum up_action death)
{
    struct http_client_config cfg = base_cfg();
    struct http_client_request r;
    struct got g;

    cfg.attempts = 3;
    fx_start(&cfg);
    script(0, (struct up_reply){.status = 200, .body = "warm"});
    script(1, (struct up_reply){.action = death});
    fx.up.dflt = (struct up_reply){.status = 200, .body = "charged again"};
    r = get("/warm");
    fetch(&r, &g);
    cr_assert_eq(g.status, 200);

    r = req_to("POST", fx.up.port, "/charge");
    r.body = "{\"cents\":100}";
    r.body_len = strlen(r.body);
    fetch(&r, &g);
    run_for(50);
    cr_assert_eq(fx.up.count, 2,
                 "the non-idempotent POST reached the upstream %zu times (answer: status %d, "
                 "error %d, attempts %u, connections %zu)",
                 fx.up.count - 1, g.status, g.error, g.attempts, fx.up.accepted);
    cr_assert_neq(g.error, 0);
    cr_assert_eq(g.attempts, 1);
    fx_finish();
}

Test(http_client, post_not_resent_when_reused_connection_resets)
{
    post_on_dying_connection(UP_RESET);
}

Test(http_client, post_not_resent_when_reused_connection_closes)
{
    post_on_dying_connection(UP_CLOSE);
}

/* ---------------------------------------------------------------------------
 * The circuit breaker
 * ------------------------------------------------------------------------- */

Test(http_client, breaker_opens_and_fails_fast)
{
    struct http_client_config cfg = base_cfg();
    struct http_client_request r;
    struct got g;
    double ms;

    cfg.breaker_failures = 3;
    cfg.breaker_cooldown_ms = 5000;
    fx_start(&cfg);
    fx.up.dflt = (struct up_reply){.status = 503, .body = "busy"};
    for (int i = 0; i < 3; i++) {
        cr_assert_eq(http_client_circuit(fx.c, "t"), i == 0 ? -1 : 0);
        r = get("/busy");
        fetch(&r, &g);
        cr_assert_eq(g.status, 503);
    }
    cr_assert_eq(http_client_circuit(fx.c, "t"), 1);
    assert_gauge("t", "1");

    r = get("/busy");
    ms = fetch(&r, &g);
    cr_assert_eq(g.error, -EAGAIN, "error %d (%s)", g.error, g.error_msg);
    cr_assert_str_neq(g.error_msg, "");
    cr_assert_eq(g.status, 0);
    cr_assert_eq(fx.up.count, 3, "the upstream was contacted with the breaker open");
    cr_assert(ms < 100 * slack(), "failing fast took %.1f ms", ms);
    run_for(20);
    cr_assert_eq(g.calls, 1);
    assert_count("t", "circuit_open", "1");

    /* another target has a breaker of its own */
    r = get("/busy");
    r.target = "u";
    fetch(&r, &g);
    cr_assert_eq(g.status, 503);
    cr_assert_eq(fx.up.count, 4);
    cr_assert_eq(http_client_circuit(fx.c, "u"), 0);
    assert_gauge("u", "0");
    fx_finish();
}

Test(http_client, breaker_counts_connect_errors_and_timeouts)
{
    struct http_client_config cfg = base_cfg();
    struct http_client_request r;
    struct got g;

    cfg.breaker_failures = 2;
    cfg.breaker_cooldown_ms = 5000;
    cfg.timeout_ms = 100;
    fx_start(&cfg);
    fx.up.dflt = (struct up_reply){.action = UP_HANG};
    r = req_to("GET", down_port(), "/down");
    fetch(&r, &g);
    cr_assert_eq(g.error, -ECONNREFUSED, "error %d (%s)", g.error, g.error_msg);
    cr_assert_eq(http_client_circuit(fx.c, "t"), 0);
    r = get("/hang");
    fetch(&r, &g);
    cr_assert_eq(g.error, -ETIMEDOUT, "error %d (%s)", g.error, g.error_msg);
    cr_assert_eq(http_client_circuit(fx.c, "t"), 1);
    r = get("/hang");
    fetch(&r, &g);
    cr_assert_eq(g.error, -EAGAIN, "error %d (%s)", g.error, g.error_msg);
    cr_assert_eq(fx.up.count, 1);
    fx_finish();
}

Test(http_client, breaker_needs_consecutive_failures)
{
    static const int statuses[] = {503, 503, 200, 503, 503, 404, 503, 503, 503};
    struct http_client_config cfg = base_cfg();
    struct http_client_request r;
    struct got g;
    size_t n = sizeof(statuses) / sizeof(statuses[0]);

    cfg.breaker_failures = 3;
    fx_start(&cfg);
    for (size_t i = 0; i < n; i++)
        script(i, (struct up_reply){.status = statuses[i], .body = "s"});
    for (size_t i = 0; i < n; i++) {
        r = get("/s");
        fetch(&r, &g);
        cr_assert_eq(g.status, statuses[i], "request %zu: status %d, error %d", i, g.status,
                     g.error);
        cr_assert_eq(http_client_circuit(fx.c, "t"), i + 1 < n ? 0 : 1, "after request %zu", i);
    }
    fx_finish();
}

Test(http_client, breaker_half_open_lets_one_probe_through)
{
    struct http_client_config cfg = base_cfg();
    struct http_client_request r;
    struct got g, probe[3];
    int ok = 0, fast = 0;

    cfg.breaker_failures = 2;
    cfg.breaker_cooldown_ms = 300;
    fx_start(&cfg);
    script(0, (struct up_reply){.status = 503});
    script(1, (struct up_reply){.status = 503});
    fx.up.dflt = (struct up_reply){.status = 200, .body = "probe-ok", .delay_ms = 100};
    for (int i = 0; i < 2; i++) {
        r = get("/p");
        fetch(&r, &g);
    }
    cr_assert_eq(http_client_circuit(fx.c, "t"), 1);
    r = get("/p");
    fetch(&r, &g);
    cr_assert_eq(g.error, -EAGAIN, "error %d (%s)", g.error, g.error_msg);
    cr_assert_eq(fx.up.count, 2);

    run_for(320); /* the cooldown */
    memset(probe, 0, sizeof(probe));
    for (int i = 0; i < 3; i++) {
        r = get("/p");
        send_req(&r, &probe[i]);
    }
    RUN_UNTIL(total_calls(probe, 3) >= 2, 2000);
    cr_assert_eq(total_calls(probe, 3), 2,
                 "with the probe in flight, two requests should have failed fast");
    cr_assert_eq(http_client_circuit(fx.c, "t"), 2);
    assert_gauge("t", "2");
    RUN_UNTIL(total_calls(probe, 3) >= 3, 2000);
    for (int i = 0; i < 3; i++) {
        cr_assert_eq(probe[i].calls, 1, "request %d answered %d times", i, probe[i].calls);
        if (probe[i].error == 0 && probe[i].status == 200 && strcmp(probe[i].body, "probe-ok") == 0)
            ok++;
        else if (probe[i].error == -EAGAIN && probe[i].status == 0)
            fast++;
    }
    cr_assert_eq(ok, 1);
    cr_assert_eq(fast, 2);
    cr_assert_eq(fx.up.count, 3, "%zu probes went through", fx.up.count - 2);
    cr_assert_eq(http_client_circuit(fx.c, "t"), 0);
    assert_gauge("t", "0");

    r = get("/p");
    fetch(&r, &g);
    cr_assert_eq(g.status, 200);
    cr_assert_eq(fx.up.count, 4);
    fx_finish();
}

Test(http_client, breaker_failed_probe_reopens)
{
    struct http_client_config cfg = base_cfg();
    struct http_client_request r;
    struct got g;
    double ms;

    cfg.breaker_failures = 2;
    cfg.breaker_cooldown_ms = 200;
    fx_start(&cfg);
    fx.up.dflt = (struct up_reply){.status = 503};
    for (int i = 0; i < 2; i++) {
        r = get("/p");
        fetch(&r, &g);
    }
    cr_assert_eq(http_client_circuit(fx.c, "t"), 1);
    run_for(220);
    r = get("/p");
    fetch(&r, &g); /* the probe */
    cr_assert_eq(g.status, 503);
    cr_assert_eq(fx.up.count, 3);
    cr_assert_eq(http_client_circuit(fx.c, "t"), 1);
    assert_gauge("t", "1");
    r = get("/p");
    ms = fetch(&r, &g);
    cr_assert_eq(g.error, -EAGAIN, "error %d (%s)", g.error, g.error_msg);
    cr_assert(ms < 100 * slack(), "failing fast took %.1f ms", ms);
    cr_assert_eq(fx.up.count, 3);

    /* the next cooldown ends with a good probe */
    fx.up.dflt = (struct up_reply){.status = 200, .body = "ok"};
    run_for(220);
    r = get("/p");
    fetch(&r, &g);
    cr_assert_eq(g.status, 200);
    cr_assert_eq(http_client_circuit(fx.c, "t"), 0);
    assert_gauge("t", "0");
    fx_finish();
}

/* ---------------------------------------------------------------------------
 * The cache
 * ------------------------------------------------------------------------- */

Test(http_client, cache_serves_fresh_then_expires)
{
    struct http_client_config cfg = base_cfg();
    struct http_client_request r;
    struct got g;
    double ms;

    fx_start(&cfg);
    script(0, (struct up_reply){.status = 200, .body = "v1"});
    script(1, (struct up_reply){.status = 200, .body = "other"});
    script(2, (struct up_reply){.status = 200, .body = "v2"});
    r = get("/c");
    r.cache_ttl_ms = 200;
    fetch(&r, &g);
    cr_assert_str_eq(g.body, "v1");
    cr_assert_eq(g.from_cache, 0);

    r = get("/c");
    r.cache_ttl_ms = 200;
    ms = fetch(&r, &g);
    cr_assert_eq(g.from_cache, 1);
    cr_assert_eq(g.error, 0);
    cr_assert_eq(g.status, 200);
    cr_assert_str_eq(g.body, "v1");
    cr_assert_eq(g.body_len, 2);
    cr_assert_eq(fx.up.count, 1, "a cache hit contacted the upstream");
    cr_assert(ms < 100 * slack(), "a cache hit took %.1f ms", ms);
    run_for(20);
    cr_assert_eq(g.calls, 1);

    r = get("/c?other");
    r.cache_ttl_ms = 200;
    fetch(&r, &g);
    cr_assert_eq(g.from_cache, 0);
    cr_assert_str_eq(g.body, "other");
    cr_assert_eq(fx.up.count, 2);

    run_for(220); /* past the TTL of /c */
    r = get("/c");
    r.cache_ttl_ms = 200;
    fetch(&r, &g);
    cr_assert_eq(g.from_cache, 0);
    cr_assert_str_eq(g.body, "v2");
    cr_assert_eq(fx.up.count, 3);
    assert_count("t", "cache_hit", "1");
    fx_finish();
}

Test(http_client, cache_keeps_404_for_the_negative_ttl_only)
{
    struct http_client_config cfg = base_cfg();
    struct http_client_request r;
    struct got g;

    fx_start(&cfg);
    script(0, (struct up_reply){.status = 404, .body = "nf"});
    script(1, (struct up_reply){.status = 404, .body = "nf2"});
    script(2, (struct up_reply){.status = 404, .body = "m"});
    script(3, (struct up_reply){.status = 404, .body = "m"});
    script(4, (struct up_reply){.status = 500, .body = "e"});
    script(5, (struct up_reply){.status = 500, .body = "e"});

    r = get("/n");
    r.cache_negative_ttl_ms = 200;
    fetch(&r, &g);
    cr_assert_eq(g.status, 404);
    cr_assert_eq(g.from_cache, 0);
    fetch(&r, &g);
    cr_assert_eq(g.status, 404);
    cr_assert_eq(g.from_cache, 1);
    cr_assert_str_eq(g.body, "nf");
    cr_assert_eq(fx.up.count, 1);
    run_for(220);
    fetch(&r, &g);
    cr_assert_eq(g.from_cache, 0);
    cr_assert_str_eq(g.body, "nf2");
    cr_assert_eq(fx.up.count, 2);

    /* no negative TTL: a 404 is not kept */
    r = get("/m");
    r.cache_ttl_ms = 1000;
    fetch(&r, &g);
    fetch(&r, &g);
    cr_assert_eq(g.from_cache, 0);
    cr_assert_eq(fx.up.count, 4);

    /* a 5xx is never kept */
    r = get("/e");
    r.cache_ttl_ms = 1000;
    r.cache_negative_ttl_ms = 1000;
    fetch(&r, &g);
    fetch(&r, &g);
    cr_assert_eq(g.status, 500);
    cr_assert_eq(g.from_cache, 0);
    cr_assert_eq(fx.up.count, 6);
    fx_finish();
}

Test(http_client, cache_serves_stale_while_down_within_stale_ms)
{
    struct http_client_config cfg = base_cfg();
    struct http_client_request r;
    struct got g;

    cfg.attempts = 2;
    cfg.backoff_ms = 10;
    fx_start(&cfg);
    fx.up.dflt = (struct up_reply){.status = 200, .body = "v1"};
    r = get("/s");
    r.cache_ttl_ms = 50;
    r.cache_stale_ms = 400;
    fetch(&r, &g);
    cr_assert_str_eq(g.body, "v1");

    up_stop(&fx.up);
    run_for(100); /* past the TTL, within cache_stale_ms */
    fetch(&r, &g);
    cr_assert_eq(g.error, 0, "error %d (%s)", g.error, g.error_msg);
    cr_assert_eq(g.from_cache, 2);
    cr_assert_eq(g.status, 200);
    cr_assert_str_eq(g.body, "v1");

    run_for(350); /* past cache_stale_ms */
    fetch(&r, &g);
    cr_assert_eq(g.error, -ECONNREFUSED, "error %d (%s)", g.error, g.error_msg);
    cr_assert_eq(g.from_cache, 0);
    cr_assert_eq(g.status, 0);
    assert_count("t", "stale", "1");
    fx_finish();
}

Test(http_client, cache_serves_stale_while_breaker_open)
{
    struct http_client_config cfg = base_cfg();
    struct http_client_request r, s;
    struct got g;

    cfg.breaker_failures = 2;
    cfg.breaker_cooldown_ms = 5000;
    fx_start(&cfg);
    script(0, (struct up_reply){.status = 200, .body = "v1"});
    script(1, (struct up_reply){.status = 503});
    script(2, (struct up_reply){.status = 503});
    fx.up.dflt = (struct up_reply){.status = 200, .body = "never"};
    s = get("/s");
    s.cache_ttl_ms = 150;
    s.cache_stale_ms = 3000;
    fetch(&s, &g);
    cr_assert_str_eq(g.body, "v1");
    r = get("/f");
    fetch(&r, &g);
    fetch(&r, &g);
    cr_assert_eq(http_client_circuit(fx.c, "t"), 1);

    fetch(&s, &g); /* fresh: the cache answers before the breaker is asked */
    cr_assert_eq(g.from_cache, 1);
    cr_assert_str_eq(g.body, "v1");

    run_for(170); /* past the TTL */
    fetch(&s, &g);
    cr_assert_eq(g.error, 0, "error %d (%s)", g.error, g.error_msg);
    cr_assert_eq(g.from_cache, 2);
    cr_assert_eq(g.status, 200);
    cr_assert_str_eq(g.body, "v1");
    cr_assert_eq(fx.up.count, 3);

    fetch(&r, &g); /* nothing cached */
    cr_assert_eq(g.error, -EAGAIN);
    cr_assert_eq(fx.up.count, 3);
    assert_count("t", "stale", "1");
    assert_count("t", "cache_hit", "1");
    assert_count("t", "circuit_open", "1");
    fx_finish();
}

Test(http_client, cache_serves_stale_on_5xx)
{
    struct http_client_config cfg = base_cfg();
    struct http_client_request r;
    struct got g;

    fx_start(&cfg);
    script(0, (struct up_reply){.status = 200, .body = "v1"});
    fx.up.dflt = (struct up_reply){.status = 503, .body = "busy"};
    r = get("/s");
    r.cache_ttl_ms = 50;
    r.cache_stale_ms = 3000;
    fetch(&r, &g);
    run_for(80);
    fetch(&r, &g);
    cr_assert_eq(fx.up.count, 2);
    cr_assert_eq(g.error, 0);
    cr_assert_eq(g.from_cache, 2);
    cr_assert_eq(g.status, 200);
    cr_assert_str_eq(g.body, "v1");
    fx_finish();
}

/* ---------------------------------------------------------------------------
 * Limits and closing
 * ------------------------------------------------------------------------- */

Test(http_client, response_size_limit)
{
    struct http_client_config cfg = base_cfg();
    struct http_client_request r;
    struct got g;

    cfg.max_response_bytes = 1024;
    cfg.attempts = 3;
    cfg.backoff_ms = 10;
    fx_start(&cfg);
    script(0, (struct up_reply){.status = 200, .body_len = 1024});
    script(1, (struct up_reply){.status = 200, .body_len = 1025});
    script(2, (struct up_reply){.status = 503, .body_len = 4096});
    fx.up.dflt = (struct up_reply){.status = 200, .body_len = 64 * 1024};

    r = get("/big");
    fetch(&r, &g);
    cr_assert_eq(g.error, 0, "error %d (%s)", g.error, g.error_msg);
    cr_assert_eq(g.body_len, 1024);

    fetch(&r, &g);
    cr_assert_eq(g.error, -EMSGSIZE, "error %d (%s)", g.error, g.error_msg);
    cr_assert_eq(g.attempts, 1);

    fetch(&r, &g); /* a 503 would be retried, but not past the limit */
    cr_assert_eq(g.error, -EMSGSIZE, "error %d (%s)", g.error, g.error_msg);
    cr_assert_eq(g.attempts, 1);

    fetch(&r, &g);
    cr_assert_eq(g.error, -EMSGSIZE, "error %d (%s)", g.error, g.error_msg);
    cr_assert_eq(g.attempts, 1);
    run_for(60);
    cr_assert_eq(fx.up.count, 4);
    fx_finish();
}

Test(http_client, close_cancels_every_request_once)
{
    struct http_client_config cfg = base_cfg();
    struct http_client_request r;
    struct got hang = {0}, backoff = {0}, fresh = {0};

    cfg.attempts = 3;
    cfg.backoff_ms = 1000;
    cfg.timeout_ms = 5000;
    fx_start(&cfg);
    fx.up.dflt = (struct up_reply){.action = UP_HANG};
    r = get("/hang");
    send_req(&r, &hang);
    r = req_to("GET", down_port(), "/down");
    send_req(&r, &backoff);
    RUN_UNTIL(fx.up.count == 1, 2000);
    run_for(50); /* the refused one now waits 500..1000 ms to retry */
    cr_assert_eq(fx.up.count, 1);
    cr_assert_eq(hang.calls + backoff.calls, 0);
    r = get("/fresh");
    send_req(&r, &fresh); /* not even started */

    fx.closing = 1;
    http_client_close(fx.c, on_client_closed, NULL);
    RUN_UNTIL(fx.closed, 2000);
    cr_assert_eq(fx.closed, 1);
    run_for(50);
    cr_assert_eq(hang.calls, 1, "in flight: %d callbacks", hang.calls);
    cr_assert_eq(backoff.calls, 1, "waiting to retry: %d callbacks", backoff.calls);
    cr_assert_eq(fresh.calls, 1, "not started: %d callbacks", fresh.calls);
    cr_assert_eq(hang.error, -ECANCELED, "error %d (%s)", hang.error, hang.error_msg);
    cr_assert_eq(backoff.error, -ECANCELED, "error %d (%s)", backoff.error, backoff.error_msg);
    cr_assert_eq(fresh.error, -ECANCELED, "error %d (%s)", fresh.error, fresh.error_msg);
    cr_assert_eq(fx.up.count, 1);
    fx_finish();
}

Test(http_client, close_from_inside_a_callback)
{
    struct http_client_config cfg = base_cfg();
    struct http_client_request r;
    struct got hang = {0}, quick = {0};

    cfg.timeout_ms = 5000;
    fx_start(&cfg);
    script(0, (struct up_reply){.action = UP_HANG});
    fx.up.dflt = (struct up_reply){.status = 200, .body = "quick"};
    r = get("/hang");
    send_req(&r, &hang);
    RUN_UNTIL(fx.up.count == 1, 2000);
    quick.close_client = 1;
    r = get("/quick");
    send_req(&r, &quick);
    RUN_UNTIL(fx.closed, 2000);
    cr_assert_eq(fx.closed, 1);
    run_for(20);
    cr_assert_eq(quick.calls, 1, "the callback that closed the client fired %d times", quick.calls);
    cr_assert_eq(hang.calls, 1, "%d callbacks", hang.calls);
    cr_assert_eq(hang.error, -ECANCELED);
    fx_finish();
}

/* ---------------------------------------------------------------------------
 * Metrics
 * ------------------------------------------------------------------------- */

Test(http_client, metrics_count_each_result)
{
    struct http_client_config cfg = base_cfg();
    struct http_client_request r, s;
    struct got g;

    cfg.timeout_ms = 150;
    cfg.breaker_failures = 3;
    cfg.breaker_cooldown_ms = 5000;
    fx_start(&cfg);
    script(0, (struct up_reply){.status = 200, .body = "c"});
    script(1, (struct up_reply){.status = 200, .body = "s"});
    script(2, (struct up_reply){.status = 404});
    script(3, (struct up_reply){.status = 503});
    script(4, (struct up_reply){.action = UP_HANG});
    fx.up.dflt = (struct up_reply){.status = 200, .body = "u"};

    r = get("/c");
    r.cache_ttl_ms = 5000;
    fetch(&r, &g); /* 2xx */
    fetch(&r, &g); /* cache_hit */
    cr_assert_eq(g.from_cache, 1);
    s = get("/s");
    s.cache_ttl_ms = 1;
    s.cache_stale_ms = 10000;
    fetch(&s, &g); /* 2xx */
    r = get("/nf");
    fetch(&r, &g); /* 4xx */
    r = get("/e");
    fetch(&r, &g); /* 5xx */
    r = get("/h");
    fetch(&r, &g); /* timeout */
    cr_assert_eq(g.error, -ETIMEDOUT);
    r = req_to("GET", down_port(), "/d");
    fetch(&r, &g); /* connect_error: the third failure in a row */
    cr_assert_eq(g.error, -ECONNREFUSED);
    r = get("/x");
    fetch(&r, &g); /* circuit_open */
    cr_assert_eq(g.error, -EAGAIN);
    fetch(&s, &g); /* stale */
    cr_assert_eq(g.from_cache, 2);
    r = get("/u");
    r.target = "u";
    fetch(&r, &g); /* target u: 2xx */
    cr_assert_eq(g.status, 200);

    assert_count("t", "2xx", "2");
    assert_count("t", "cache_hit", "1");
    assert_count("t", "4xx", "1");
    assert_count("t", "5xx", "1");
    assert_count("t", "timeout", "1");
    assert_count("t", "connect_error", "1");
    assert_count("t", "circuit_open", "1");
    assert_count("t", "stale", "1");
    assert_count("u", "2xx", "1");
    assert_gauge("t", "1");
    assert_gauge("u", "0");
    fx_finish();
}

/* The metrics registry outlives the client (metrics.h: series stay valid
 * until metrics_free), so rendering after http_client_close must not read
 * the freed client (circuit_state is a callback gauge). */
Test(http_client, metrics_render_after_close)
{
    struct http_client_config cfg = base_cfg();
    struct http_client_request r;
    struct got g;
    char *out = NULL;
    size_t len = 0;

    fx_start(&cfg);
    r = get("/x");
    fetch(&r, &g);
    fx_close_client();
    cr_assert_eq(metrics_render(fx.metrics, &out, &len), 0);
    cr_assert_not_null(out);
    free(out);
    fx_finish();
}

/* ---------------------------------------------------------------------------
 * More of the contract
 * ------------------------------------------------------------------------- */

Test(http_client, head_request_completes)
{
    struct http_client_config cfg = base_cfg();
    struct http_client_request r;
    struct got g;
    double ms;

    cfg.timeout_ms = 500;
    fx_start(&cfg);
    fx.up.dflt = (struct up_reply){.status = 200, .body = "twelve bytes"};
    r = req_to("HEAD", fx.up.port, "/h");
    ms = fetch(&r, &g);
    cr_assert_str_eq(fx.up.method[0], "HEAD");
    cr_assert_eq(g.error, 0, "error %d (%s) after %.1f ms", g.error, g.error_msg, ms);
    cr_assert_eq(g.status, 200);
    cr_assert_eq(g.body_len, 0);
    fx_finish();
}

struct chain {
    struct got first, second;
    int rc;
    int early; /* the second callback fired inside its send */
};

static void on_chain(const struct http_client_response *res, void *data)
{
    struct chain *ch = data;
    struct http_client_request r = get("/second");

    on_got(res, &ch->first);
    ch->rc = http_client_send(fx.c, &r, on_got, &ch->second);
    ch->early = ch->second.calls;
}

Test(http_client, send_from_inside_a_callback)
{
    struct http_client_config cfg = base_cfg();
    struct http_client_request r;
    struct chain ch = {0};

    fx_start(&cfg);
    fx.up.dflt = (struct up_reply){.status = 200, .body = "chained"};
    r = get("/first");
    r.cache_ttl_ms = 1000;
    cr_assert_eq(http_client_send(fx.c, &r, on_chain, &ch), 0);
    RUN_UNTIL(ch.second.calls > 0, 2000);
    cr_assert_eq(ch.first.calls, 1);
    cr_assert_eq(ch.rc, 0);
    cr_assert_eq(ch.early, 0);
    cr_assert_eq(ch.second.calls, 1);
    cr_assert_eq(ch.second.status, 200);

    memset(&ch, 0, sizeof(ch)); /* again, from a cache hit */
    cr_assert_eq(http_client_send(fx.c, &r, on_chain, &ch), 0);
    RUN_UNTIL(ch.second.calls > 0, 2000);
    cr_assert_eq(ch.first.from_cache, 1);
    cr_assert_eq(ch.rc, 0);
    cr_assert_eq(ch.early, 0);
    cr_assert_eq(ch.second.status, 200);
    cr_assert_eq(fx.up.count, 3);
    fx_finish();
}

Test(http_client, cache_evicts_oldest_past_max_entries)
{
    static const char *const paths[] = {"/a", "/b", "/c"};
    struct http_client_config cfg = base_cfg();
    struct http_client_request r;
    struct got g;

    cfg.max_cache_entries = 2;
    fx_start(&cfg);
    for (size_t i = 0; i < 3; i++) {
        r = get(paths[i]);
        r.cache_ttl_ms = 5000;
        fetch(&r, &g);
    }
    cr_assert_eq(fx.up.count, 3);
    r = get("/a"); /* evicted by /c; stored again, evicting /b */
    r.cache_ttl_ms = 5000;
    fetch(&r, &g);
    cr_assert_eq(g.from_cache, 0);
    cr_assert_eq(fx.up.count, 4);
    r = get("/c");
    r.cache_ttl_ms = 5000;
    fetch(&r, &g);
    cr_assert_eq(g.from_cache, 1);
    cr_assert_eq(fx.up.count, 4);
    fx_finish();
}

Test(http_client, send_rejects_bad_targets_without_callback)
{
    struct http_client_config cfg = base_cfg();
    struct http_client_request r;
    struct got g[HTTP_CLIENT_MAX_TARGETS + 2];
    char names[HTTP_CLIENT_MAX_TARGETS + 1][8];
    int done = 0;

    memset(g, 0, sizeof(g));
    fx_start(&cfg);
    for (int i = 0; i < HTTP_CLIENT_MAX_TARGETS; i++) {
        snprintf(names[i], sizeof(names[i]), "t%d", i);
        r = get("/x");
        r.target = names[i];
        send_req(&r, &g[i]);
    }
    snprintf(names[HTTP_CLIENT_MAX_TARGETS], sizeof(names[0]), "one+");
    r = get("/x");
    r.target = names[HTTP_CLIENT_MAX_TARGETS];
    cr_assert_lt(http_client_send(fx.c, &r, on_got, &g[HTTP_CLIENT_MAX_TARGETS]), 0);
    r.target = "bad\"name";
    cr_assert_lt(http_client_send(fx.c, &r, on_got, &g[HTTP_CLIENT_MAX_TARGETS + 1]), 0);
    RUN_UNTIL((done = total_calls(g, HTTP_CLIENT_MAX_TARGETS)) >= HTTP_CLIENT_MAX_TARGETS, 2000);
    run_for(20);
    cr_assert_eq(done, HTTP_CLIENT_MAX_TARGETS);
    cr_assert_eq(g[HTTP_CLIENT_MAX_TARGETS].calls, 0);
    cr_assert_eq(g[HTTP_CLIENT_MAX_TARGETS + 1].calls, 0);
    cr_assert_eq(fx.up.count, HTTP_CLIENT_MAX_TARGETS);
    fx_finish();
}

static void on_other_closed(void *data)
{
    ++*(int *)data;
}

Test(http_client, works_without_metrics)
{
    struct http_client_config cfg = base_cfg();
    struct http_client_request r;
    struct http_client *plain;
    struct got g = {0};
    int closed = 0;

    cfg.breaker_failures = 1;
    fx_start(&cfg);
    cr_assert_eq(http_client_new(&fx.loop, &cfg, NULL, &plain), 0);
    fx.up.dflt = (struct up_reply){.status = 503};
    r = get("/x");
    cr_assert_eq(http_client_send(plain, &r, on_got, &g), 0);
    RUN_UNTIL(g.calls > 0, 2000);
    cr_assert_eq(g.status, 503);
    cr_assert_eq(http_client_circuit(plain, "t"), 1);
    http_client_close(plain, on_other_closed, &closed);
    RUN_UNTIL(closed, 2000);
    cr_assert_eq(closed, 1);
    fx_finish();
}
