/* fuzz_http.c -- libFuzzer target: raw client bytes through the HTTP request
 * path of core/http_server.c, over a real loopback socket, through the
 * router, auth and http_reply to the answers.
 *
 * One process-wide setup lives for the whole run: a uv_loop_t, an
 * http_server on 127.0.0.1 (port 0) with small limits so that they are
 * reached fast, and a router whose dispatcher mirrors core/service.c (404,
 * 405 + Allow, route params, Bearer tokens checked with auth_verify_header
 * against FUZZ_SECRET at FUZZ_NOW). Routes answer at once, with a large body
 * (back-pressure: the server's sockets get a small SO_SNDBUF), or DEFERRED:
 * /defer/{n} answers n loop iterations later from a uv_idle, so clients
 * leaving and servers stopping meanwhile are exercised.
 *
 * Each input is one client connection:
 *   byte 0  bits 0-2: number of writes - 1 (1..8); bits 3-5: how the client
 *           ends: 0-3 shutdown(SHUT_WR) and read to EOF, 4-5 close, 6 reset
 *           (SO_LINGER 0), 7 first wait for the server's own timeout;
 *           bits 6-7: 2 a slow reader (a small SO_RCVBUF, nothing read until
 *           the writes are done: the server's writes queue up), 3 a flood
 *           (the bytes sent FLOOD_TIMES over: input piles up behind a
 *           request in hand)
 *   byte 1  bits 0-2: 4 one idle neighbour connection, 5 MAX_CONNS of them
 *           (the input's connection gets the 503), 6 graceful server close
 *           once the client has ended, 7 the same plus http_server_abort;
 *           others nothing. bits 3-7: seed of the write split points.
 *   rest    the bytes the client sends, split into the writes.
 * After each write the loop runs UV_RUN_NOWAIT a few times and the client
 * reads and drops what came back. Then every connection must be closed and
 * every deferred request answered within DEADLINE_MS, or the target aborts:
 * something would pile up across requests in a real service. */
#include "fuzz.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <jansson.h>
#include <uv.h>

#include <ripple/auth.h>
#include <ripple/http_reply.h>
#include <ripple/http_router.h>
#include <ripple/http_server.h>
#include <ripple/log.h>

#define MAX_HEADER_BYTES 2048
#define MAX_HEADERS 16
#define MAX_BODY_BYTES 4096
#define MAX_CONNS 4
#define HEADER_TIMEOUT_MS 10
#define IDLE_TIMEOUT_MS 10
/* Below HEADER_TIMEOUT_MS, so a stalled body meets its total deadline (not
 * the per-read gap) when a client waits for the server (end mode 7). */
#define BODY_TIMEOUT_MS 5

#define MAX_WRITES 8
#define SPINS_PER_WRITE 4  /* UV_RUN_NOWAIT passes after each write */
#define WAIT_MS 50         /* end mode 7: how long to wait for the server to hang up */
#define DEADLINE_MS 10000  /* for everything to be closed and answered; LINGER_MS is 2000 */
#define CONNECT_MS 3000    /* one connect attempt: the SYN and its first retransmission */
#define CONNECT_TIMEOUTS 3 /* connect attempts that may time out, per connection */
#define MAX_DEFER_TICKS 16
#define BIG_KIB_MAX 600     /* /big/{kib}: past HTTP_SERVER_WRITE_HIGH_WATER */
#define CLIENT_SOURCES 4000 /* 127.0.0.1 .. 127.0.15.160 */
#define FLOOD_TIMES 16
#define SLOW_RCVBUF 4096    /* bytes; the kernel doubles it */
#define SERVER_SNDBUF 16384 /* bytes: a /big answer queues in libuv */

enum end_mode { END_SHUTDOWN, END_CLOSE, END_RESET, END_WAIT };
enum special { SPECIAL_NONE, SPECIAL_NEIGHBOUR, SPECIAL_FULL, SPECIAL_STOP, SPECIAL_ABORT };

struct plan {
    const char *bytes;
    size_t len;
    char *flood; /* new: bytes FLOOD_TIMES over, or NULL */
    int slow_reader;
    size_t cut[MAX_WRITES + 1]; /* write i is bytes[cut[i]..cut[i + 1]) */
    size_t nwrites;
    enum end_mode end;
    enum special special;
};

/* A request answered later, from an idle handle; freed in its close cb. */
struct deferred {
    uv_idle_t idle;
    struct http_request *req;
    unsigned ticks; /* loop iterations left */
    size_t body_len;
};

struct stats {
    unsigned long inputs, answered, deferred, restarts;
    unsigned long connect_timeouts;           /* handshakes the machine lost: retried */
    unsigned long aborted, aborted_server_up; /* deferred answers that found the client gone */
    unsigned long status[6];                  /* seen by the client, by class: [1] 1xx .. [5] 5xx */
};

/* The process-wide setup. */
static struct {
    uv_loop_t loop;
    struct http_server *srv; /* NULL from its close until server_start */
    unsigned port;
    struct http_router *router;
    struct auth auth;
    size_t deferred_live;
    int stopping; /* http_server_close called on this input */
    struct stats st;
    char big[BIG_KIB_MAX * 1024];
} g;

/* ---------------------------------------------------------------------------
 * Handlers
 * ------------------------------------------------------------------------- */

/* What http_server.h promises about a request handed to a handler. */
static void check_request(const struct http_request *req)
{
    FUZZ_CHECK(req->method != NULL && req->path != NULL && req->query != NULL);
    FUZZ_CHECK(req->path[req->path_len] == '\0');
    FUZZ_CHECK(req->nheaders <= MAX_HEADERS);
    for (size_t i = 0; i < req->nheaders; i++) {
        const struct http_header *h = &req->headers[i];

        FUZZ_CHECK(h->name[h->name_len] == '\0' && h->value[h->value_len] == '\0');
        for (size_t k = 0; k < h->name_len; k++)
            FUZZ_CHECK(!(h->name[k] >= 'A' && h->name[k] <= 'Z'));
    }
    FUZZ_CHECK(req->body != NULL && req->body[req->body_len] == '\0');
    FUZZ_CHECK(req->body_len <= MAX_BODY_BYTES);
}

static void on_health(struct http_request *req, const struct auth_claims *who, void *data)
{
    static const char body[] = "{\"status\":\"ok\"}";

    (void)who, (void)data;
    http_respond(req, 200, "application/json", body, sizeof(body) - 1);
}

static void on_item_get(struct http_request *req, const struct auth_claims *who, void *data)
{
    const char *id = http_request_param(req, "id");
    char q[16];
    int n = http_request_query(req, "q", q, sizeof(q));

    (void)who, (void)data;
    FUZZ_CHECK(id != NULL && id[0] != '\0');
    FUZZ_CHECK(n == -ENOENT || n == -ENOSPC || (n >= 0 && (size_t)n == strlen(q)));
    /* NULL for an id that is not UTF-8: http_reply_json answers 500 */
    http_reply_json(req, 200, json_pack("{s:s, s:i}", "id", id, "q", n));
}

static void on_item_post(struct http_request *req, const struct auth_claims *who, void *data)
{
    json_t *obj;

    (void)who, (void)data;
    if (http_reply_parse_object(req, &obj) < 0)
        return;
    if (http_add_header(req, "Location", "/items/1") < 0) {
        json_decref(obj);
        http_reply_error(req, 500, NULL, "Location did not fit");
        return;
    }
    http_reply_json(req, 201, obj);
}

static void on_private(struct http_request *req, const struct auth_claims *who, void *data)
{
    (void)data;
    FUZZ_CHECK(who != NULL && who->sub[0] != '\0');
    if (strcmp(req->method, "DELETE") == 0) {
        http_respond(req, 204, NULL, NULL, 0);
        return;
    }
    http_reply_json(req, 200, json_pack("{s:s, s:b}", "sub", who->sub, "service", who->is_service));
}

/* Route params go back out as response headers: http_add_header must
 * refuse what would split the header, and stop at its buffer. */
static void on_pair(struct http_request *req, const struct auth_claims *who, void *data)
{
    const char *x = http_request_param(req, "x"), *y = http_request_param(req, "y");
    int rc;

    (void)who, (void)data;
    FUZZ_CHECK(x != NULL && y != NULL);
    do {
        rc = http_add_header(req, "X-Pair", x);
        if (rc == 0)
            rc = http_add_header(req, "X-Pair-Y", y);
    } while (rc == 0);
    FUZZ_CHECK(rc == -ENOSPC || rc == -EINVAL);
    http_respond(req, 200, "text/plain", x, strlen(x));
}

static void on_big(struct http_request *req, const struct auth_claims *who, void *data)
{
    unsigned long kib = strtoul(http_request_param(req, "kib"), NULL, 10);

    (void)who, (void)data;
    if (kib > BIG_KIB_MAX)
        kib = BIG_KIB_MAX;
    http_respond(req, 200, "text/plain", g.big, kib * 1024);
}

static void on_deferred_closed(uv_handle_t *h)
{
    free(container_of((uv_idle_t *)h, struct deferred, idle));
    g.deferred_live--;
}

static void on_deferred_tick(uv_idle_t *h)
{
    struct deferred *d = container_of(h, struct deferred, idle);
    int aborted = http_request_aborted(d->req), rc;

    if (d->ticks > 0 && !aborted) {
        d->ticks--;
        return;
    }
    g.st.deferred++;
    g.st.aborted += aborted != 0;
    g.st.aborted_server_up += aborted != 0 && !g.stopping;
    rc = http_reply_json(d->req, 200, json_pack("{s:I}", "body_len", (json_int_t)d->body_len));
    FUZZ_CHECK(rc == (aborted ? -ECONNRESET : 0));
    uv_idle_stop(h);
    uv_close((uv_handle_t *)h, on_deferred_closed);
}

static void on_defer(struct http_request *req, const struct auth_claims *who, void *data)
{
    struct deferred *d = calloc(1, sizeof(*d));

    (void)who, (void)data;
    FUZZ_CHECK(d != NULL);
    d->req = req;
    d->ticks = (unsigned)(strtoul(http_request_param(req, "n"), NULL, 10) % (MAX_DEFER_TICKS + 1));
    d->body_len = req->body_len;
    FUZZ_CHECK(uv_idle_init(&g.loop, &d->idle) == 0);
    FUZZ_CHECK(uv_idle_start(&d->idle, on_deferred_tick) == 0);
    g.deferred_live++;
}

/* ---------------------------------------------------------------------------
 * The dispatcher: core's, on our router and secret
 * ------------------------------------------------------------------------- */

static void on_request(struct http_request *req, void *data)
{
    (void)data;
    check_request(req);
    http_router_dispatch(g.router, &g.auth, FUZZ_NOW, req);
}

static void on_response(const struct http_request *req, int status, double seconds, void *data)
{
    (void)req, (void)data;
    FUZZ_CHECK(status >= 100 && status <= 599 && seconds >= 0);
    g.st.answered++;
}

/* ---------------------------------------------------------------------------
 * The process-wide setup
 * ------------------------------------------------------------------------- */

/* The kernel takes megabytes into a loopback socket at once, so answers
 * would never queue in libuv. Accepted sockets inherit the listener's
 * SO_SNDBUF; http_server does not expose its fd, so find the listening
 * socket on our port among ours. */
static void shrink_send_buffers(void)
{
    int size = SERVER_SNDBUF;

    for (int fd = 0; fd < 1024; fd++) {
        struct sockaddr_in a;
        socklen_t alen = sizeof(a);
        int listening = 0;
        socklen_t llen = sizeof(listening);

        if (getsockname(fd, (struct sockaddr *)&a, &alen) < 0 || a.sin_family != AF_INET ||
            ntohs(a.sin_port) != g.port ||
            getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &llen) < 0 || !listening)
            continue;
        FUZZ_CHECK(setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, sizeof(size)) == 0);
        return;
    }
    FUZZ_CHECK(!"the listening socket was not found");
}

static void server_start(void)
{
    static const struct http_server_config cfg = {
        .host = "127.0.0.1",
        .port = 0,
        .max_header_bytes = MAX_HEADER_BYTES,
        .max_headers = MAX_HEADERS,
        .max_body_bytes = MAX_BODY_BYTES,
        .max_connections = MAX_CONNS,
        .header_timeout_ms = HEADER_TIMEOUT_MS,
        .body_timeout_ms = BODY_TIMEOUT_MS,
        .idle_timeout_ms = IDLE_TIMEOUT_MS,
    };

    FUZZ_CHECK(http_server_new(&g.loop, &cfg, on_request, on_response, NULL, &g.srv) == 0);
    FUZZ_CHECK(http_server_listen(g.srv) == 0);
    g.port = http_server_port(g.srv);
    FUZZ_CHECK(g.port != 0);
    shrink_send_buffers();
}

static void on_server_closed(void *data)
{
    (void)data;
    g.srv = NULL;
}

static void add_route(const char *method, const char *pattern, unsigned flags,
                      http_handler_cb handler)
{
    FUZZ_CHECK(http_router_add(g.router, method, pattern, flags, handler, NULL) == 0);
}

static void print_stats(void)
{
    const struct stats *s = &g.st;

    fprintf(stderr,
            "fuzz_http: %lu inputs, %lu answers via http_respond, %lu deferred (%lu aborted, %lu "
            "of them with the server up), %lu server restarts, %lu connects retried after a "
            "timeout; statuses seen by clients: 1xx %lu, 2xx %lu, 3xx %lu, 4xx %lu, 5xx %lu\n",
            s->inputs, s->answered, s->deferred, s->aborted, s->aborted_server_up, s->restarts,
            s->connect_timeouts, s->status[1], s->status[2], s->status[3], s->status[4],
            s->status[5]);
}

static void init_once(void)
{
    static int done;

    if (done)
        return;
    done = 1;
    signal(SIGPIPE, SIG_IGN); /* as service.c: writes to a gone client are EPIPE */
    log_set_level(LOG_LEVEL_ERROR);
    memset(g.big, 'x', sizeof(g.big));
    FUZZ_CHECK(uv_loop_init(&g.loop) == 0);
    FUZZ_CHECK(auth_init(&g.auth, FUZZ_SECRET) == 0);
    FUZZ_CHECK(http_router_new(&g.router) == 0);
    add_route("GET", "/healthz", HTTP_ROUTE_PUBLIC, on_health);
    add_route("GET", "/items/{id}", HTTP_ROUTE_PUBLIC, on_item_get);
    add_route("POST", "/items", HTTP_ROUTE_PUBLIC, on_item_post);
    add_route("GET", "/private/{id}", 0, on_private);
    add_route("DELETE", "/private/{id}", 0, on_private);
    add_route("GET", "/a/{x}/b/{y}", HTTP_ROUTE_PUBLIC, on_pair);
    add_route("GET", "/big/{kib}", HTTP_ROUTE_PUBLIC, on_big);
    add_route("GET", "/defer/{n}", HTTP_ROUTE_PUBLIC, on_defer);
    add_route("POST", "/defer/{n}", 0, on_defer);
    server_start();
    atexit(print_stats);
}

/* ---------------------------------------------------------------------------
 * The loop and the client side
 * ------------------------------------------------------------------------- */

static void loop_spin(int n)
{
    for (int i = 0; i < n; i++)
        uv_run(&g.loop, UV_RUN_NOWAIT);
}

/* Waits at most ms for the loop to have something to do, then runs it. */
static void loop_wait(int ms)
{
    struct pollfd p = {.fd = uv_backend_fd(&g.loop), .events = POLLIN};
    int t = uv_backend_timeout(&g.loop);

    if (t < 0 || t > ms)
        t = ms;
    (void)poll(&p, 1, t);
    uv_run(&g.loop, UV_RUN_NOWAIT);
}

static uint64_t now_ms(void)
{
    return uv_hrtime() / 1000000;
}

/* connect() on a non-blocking fd, waited for: libFuzzer's SIGALRM (for
 * -timeout) would interrupt a blocking one. Returns 0 or a negative errno. */
static int connect_wait(int fd, const struct sockaddr_in *to)
{
    struct pollfd p = {.fd = fd, .events = POLLOUT};
    socklen_t len = sizeof(int);
    int err = 0, n;

    if (connect(fd, (const struct sockaddr *)to, sizeof(*to)) == 0)
        return 0;
    if (errno != EINPROGRESS && errno != EINTR)
        return -errno;
    do
        n = poll(&p, 1, CONNECT_MS);
    while (n < 0 && errno == EINTR);
    if (n == 0)
        return -ETIMEDOUT;
    if (n < 0 || getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
        return -errno;
    return -err;
}

/* Whether a failed connect is the machine's problem, and worth another
 * try from another address: out of ports, or (at most CONNECT_TIMEOUTS
 * times) a handshake that timed out. The kernel completes handshakes into
 * the listen queue without the server's loop, and the queue is far from full
 * (a few connections per input), so an unanswered SYN is the host's: it was
 * seen once in 350,000 inputs while the host's TIME_WAIT table overflowed. A
 * server that stops accepting still fails: its clients never get an answer
 * (settle), and a full queue times out more than CONNECT_TIMEOUTS times. */
static int connect_retryable(int rc, int *timeouts)
{
    if (rc == -EADDRNOTAVAIL || rc == -EADDRINUSE)
        return 1;
    if (rc == -ETIMEDOUT && ++*timeouts <= CONNECT_TIMEOUTS) {
        g.st.connect_timeouts++;
        return 1;
    }
    return 0;
}

/* A connection from 127.0.x.y (rotating) to the server. Thousands of
 * connections a second leave their 4-tuples in TIME_WAIT for a minute: one
 * source address would run out of ephemeral ports. */
static int client_connect(int rcvbuf)
{
    static unsigned next_src;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)g.port)};
    struct sockaddr_in src = {.sin_family = AF_INET};
    int fd, one = 1, tries = 0, timeouts = 0, rc;

    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    for (;;) {
        src.sin_addr.s_addr = htonl(0x7f000000u | (1 + next_src++ % CLIENT_SOURCES));
        fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        FUZZ_CHECK(fd >= 0);
        (void)setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof(one));
        if (rcvbuf > 0) /* before connect: it sets the window offered */
            FUZZ_CHECK(setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf)) == 0);
        rc = bind(fd, (struct sockaddr *)&src, sizeof(src)) < 0 ? -errno : connect_wait(fd, &a);
        if (rc == 0)
            break;
        close(fd);
        if (rc != -EADDRNOTAVAIL && rc != -EADDRINUSE)
            fprintf(stderr, "fuzz_http: connect: %s\n", strerror(-rc));
        FUZZ_CHECK(connect_retryable(rc, &timeouts) && ++tries < 100);
        usleep(10000);
    }
    FUZZ_CHECK(setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) == 0);
    return fd;
}

/* Counts status lines (roughly: a body may hold one too; statistics only). */
static void count_statuses(const char *buf, size_t len)
{
    for (size_t i = 0; i + 12 <= len; i++) {
        if (buf[i] == 'H' && memcmp(buf + i, "HTTP/1.1 ", 9) == 0 && buf[i + 9] >= '1' &&
            buf[i + 9] <= '5')
            g.st.status[buf[i + 9] - '0']++;
    }
}

/* Reads and drops what the server sent. Returns 1 at EOF or error. */
static int client_drain(int fd)
{
    char buf[16384];

    for (;;) {
        ssize_t n = recv(fd, buf, sizeof(buf), MSG_DONTWAIT);

        if (n > 0) {
            count_statuses(buf, (size_t)n);
            continue;
        }
        return n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR);
    }
}

/* Sends one write, running the loop while the socket is full. Returns -1
 * once the server is gone. */
static int client_send(int fd, const char *p, size_t len)
{
    uint64_t deadline = now_ms() + DEADLINE_MS;

    while (len > 0) {
        ssize_t n = send(fd, p, len, MSG_NOSIGNAL);

        if (n > 0) {
            p += n;
            len -= (size_t)n;
            continue;
        }
        if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
            return -1;
        FUZZ_CHECK(now_ms() < deadline); /* the server stopped reading for good */
        client_drain(fd);
        loop_wait(1);
    }
    return 0;
}

/* Opens n idle connections and waits until the server has them all. */
static void neighbours_open(int *fds, size_t n)
{
    uint64_t deadline = now_ms() + DEADLINE_MS;

    for (size_t i = 0; i < n; i++)
        fds[i] = client_connect(0);
    while (http_server_connections(g.srv) < n) {
        FUZZ_CHECK(now_ms() < deadline);
        loop_wait(1);
    }
}

/* ---------------------------------------------------------------------------
 * One input
 * ------------------------------------------------------------------------- */

static void plan_make(struct plan *pl, const uint8_t *data, size_t size)
{
    static const enum end_mode ends[8] = {END_SHUTDOWN, END_SHUTDOWN, END_SHUTDOWN, END_SHUTDOWN,
                                          END_CLOSE,    END_CLOSE,    END_RESET,    END_WAIT};
    static const enum special specials[8] = {SPECIAL_NONE, SPECIAL_NONE,      SPECIAL_NONE,
                                             SPECIAL_NONE, SPECIAL_NEIGHBOUR, SPECIAL_FULL,
                                             SPECIAL_STOP, SPECIAL_ABORT};
    uint32_t x = (uint32_t)(data[1] >> 3) * 2654435761u + 1;
    size_t want = (size_t)(data[0] & 7) + 1, cuts[MAX_WRITES];

    pl->bytes = (const char *)data + 2;
    pl->len = size - 2;
    pl->slow_reader = data[0] >> 6 == 2;
    pl->flood = NULL;
    if (data[0] >> 6 == 3 && pl->len > 0) {
        pl->flood = malloc(pl->len * FLOOD_TIMES);
        FUZZ_CHECK(pl->flood != NULL);
        for (size_t i = 0; i < FLOOD_TIMES; i++)
            memcpy(pl->flood + i * pl->len, pl->bytes, pl->len);
        pl->bytes = pl->flood;
        pl->len *= FLOOD_TIMES;
    }
    pl->end = ends[(data[0] >> 3) & 7];
    pl->special = specials[data[1] & 7];
    /* want - 1 cut points from a small LCG, sorted */
    for (size_t i = 0; i + 1 < want; i++) {
        x = x * 1103515245u + 12345u;
        cuts[i] = (x >> 8) % (pl->len + 1);
        for (size_t k = i; k > 0 && cuts[k - 1] > cuts[k]; k--) {
            size_t t = cuts[k];

            cuts[k] = cuts[k - 1];
            cuts[k - 1] = t;
        }
    }
    pl->cut[0] = 0;
    for (size_t i = 0; i + 1 < want; i++)
        pl->cut[i + 1] = cuts[i];
    pl->cut[want] = pl->len;
    pl->nwrites = want;
}

/* Sends the writes; the loop runs after each. */
static void send_all(int fd, const struct plan *pl)
{
    for (size_t i = 0; i < pl->nwrites; i++) {
        size_t from = pl->cut[i], to = pl->cut[i + 1];

        if (to > from && client_send(fd, pl->bytes + from, to - from) < 0)
            return;
        loop_spin(SPINS_PER_WRITE);
        if (!pl->slow_reader && client_drain(fd))
            return;
    }
}

/* Ends the client side; returns the fd if it is still open (shutdown). */
static int client_end(int fd, enum end_mode end)
{
    struct linger lg = {.l_onoff = 1, .l_linger = 0};
    uint64_t deadline;

    switch (end) {
    case END_WAIT:
        /* the server's header or idle timeout, or its linger after an error */
        deadline = now_ms() + WAIT_MS;
        while (!client_drain(fd) && now_ms() < deadline)
            loop_wait(1);
        /* fall through */
    case END_SHUTDOWN:
        (void)shutdown(fd, SHUT_WR);
        return fd;
    case END_RESET:
        (void)setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
        /* fall through */
    case END_CLOSE:
        close(fd);
        return -1;
    }
    return fd;
}

static int settled(int stopping)
{
    if (g.deferred_live > 0)
        return 0;
    return stopping ? g.srv == NULL : http_server_connections(g.srv) == 0;
}

/* Runs the loop until every connection is closed and every deferred
 * request answered (and a stopped server freed); aborts past DEADLINE_MS. */
static void settle(int fd, int stopping)
{
    uint64_t deadline = now_ms() + DEADLINE_MS;

    while (!settled(stopping) || fd >= 0) {
        if (now_ms() >= deadline) {
            fprintf(stderr,
                    "fuzz_http: not settled after %d ms: %zu connections, %zu deferred, "
                    "server %s, client %s\n",
                    DEADLINE_MS, g.srv ? http_server_connections(g.srv) : 0, g.deferred_live,
                    g.srv ? "up" : "freed", fd >= 0 ? "open (no EOF from the server)" : "closed");
            FUZZ_CHECK(!"connections or deferred requests left behind");
        }
        if (fd >= 0 && client_drain(fd)) {
            close(fd);
            fd = -1;
        }
        loop_wait(1);
    }
}

static void run(const struct plan *pl)
{
    int nb[MAX_CONNS], fd;
    size_t nnb = pl->special == SPECIAL_FULL ? MAX_CONNS : pl->special == SPECIAL_NEIGHBOUR;
    int stopping = pl->special == SPECIAL_STOP || pl->special == SPECIAL_ABORT;

    neighbours_open(nb, nnb);
    fd = client_connect(pl->slow_reader ? SLOW_RCVBUF : 0);
    send_all(fd, pl);
    fd = client_end(fd, pl->end);
    for (size_t i = 0; i < nnb; i++)
        close(nb[i]);
    if (stopping) {
        g.stopping = 1;
        http_server_close(g.srv, on_server_closed, NULL);
        if (pl->special == SPECIAL_ABORT && g.srv != NULL)
            http_server_abort(g.srv);
    }
    settle(fd, stopping);
    if (stopping) {
        g.stopping = 0;
        g.st.restarts++;
        server_start();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct plan pl;

    if (size < 2)
        return 0;
    init_once();
    g.st.inputs++;
    plan_make(&pl, data, size);
    run(&pl);
    free(pl.flood);
    return 0;
}
