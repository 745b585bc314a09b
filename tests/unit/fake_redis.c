/* fake_redis.c -- a scripted Redis server for the unit tests. See
 * fake_redis.h. Each connection is a struct fake_client, freed in its close
 * callback; a reply is copied into its write request, freed by the write
 * callback. */
#include "fake_redis.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <ripple/common.h>

const char FAKE_REDIS_HANG[] = "";

static const char role_primary[] = "*3\r\n$6\r\nmaster\r\n:0\r\n*0\r\n";

struct fake_client {
    uv_tcp_t tcp;
    struct fake_redis *f;
    struct fake_client *next;
    char *held; /* replies kept while f->holding, in order */
    size_t held_len;
    size_t len;
    char buf[FAKE_REDIS_BUF];
};

struct fake_write {
    uv_write_t req;
    char data[];
};

static void on_write(uv_write_t *req, int status)
{
    (void)status;
    free(container_of(req, struct fake_write, req));
}

static void send_reply(struct fake_client *c, const char *reply)
{
    size_t n = strlen(reply);
    struct fake_write *w = malloc(sizeof(*w) + n);
    uv_buf_t b;

    if (w == NULL)
        return;
    memcpy(w->data, reply, n);
    b = uv_buf_init(w->data, (unsigned)n);
    if (uv_write(&w->req, (uv_stream_t *)&c->tcp, &b, 1, on_write) < 0)
        free(w);
}

/* Reads "<c><number>\r\n" at *p; returns the number or -1. */
static long read_len(const char **p, const char *end, char c)
{
    const char *q = *p;
    long v = 0;

    if (q >= end || *q++ != c)
        return -1;
    while (q < end && *q >= '0' && *q <= '9')
        v = v * 10 + (*q++ - '0');
    if (end - q < 2 || q[0] != '\r' || q[1] != '\n')
        return -1;
    *p = q + 2;
    return v;
}

/* One complete command at buf: returns the bytes it takes (0: incomplete
 * or not understood), with copies of its arguments in argv. */
static size_t parse(const char *buf, size_t len, int *argc, char **argv)
{
    const char *p = buf, *end = buf + len;
    long n = read_len(&p, end, '*');

    if (n <= 0 || n > FAKE_REDIS_MAX_ARGS)
        return 0;
    for (*argc = 0; *argc < n; (*argc)++) {
        long l = read_len(&p, end, '$');

        if (l < 0 || end - p < l + 2) {
            while (*argc > 0)
                free(argv[--*argc]);
            return 0;
        }
        argv[*argc] = strndup(p, (size_t)l);
        p += l + 2;
    }
    return (size_t)(p - buf);
}

static const char *default_reply(const struct fake_redis *f, const char *cmd)
{
    if (strcasecmp(cmd, "ROLE") == 0)
        return f->role_reply ? f->role_reply : role_primary;
    if (strcasecmp(cmd, "PING") == 0)
        return "+PONG\r\n";
    return "+OK\r\n"; /* AUTH, SELECT, anything else */
}

/* Keeps reply until fake_redis_release. */
static void hold_reply(struct fake_client *c, const char *reply)
{
    size_t n = strlen(reply);
    char *p = realloc(c->held, c->held_len + n + 1);

    if (p == NULL)
        return;
    memcpy(p + c->held_len, reply, n + 1);
    c->held = p;
    c->held_len += n;
}

static void answer(struct fake_client *c, int argc, char **argv)
{
    struct fake_redis *f = c->f;
    const char *reply = f->handler ? f->handler(f, argc, argv) : NULL;

    f->commands++;
    if (reply == NULL)
        reply = default_reply(f, argv[0]);
    if (reply == FAKE_REDIS_HANG)
        return;
    if (f->holding)
        hold_reply(c, reply);
    else
        send_reply(c, reply);
}

void fake_redis_release(struct fake_redis *f)
{
    f->holding = 0;
    for (struct fake_client *c = f->clients; c != NULL; c = c->next) {
        if (c->held != NULL)
            send_reply(c, c->held);
        free(c->held);
        c->held = NULL;
        c->held_len = 0;
    }
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    struct fake_client *c = h->data;

    (void)suggested;
    *buf = uv_buf_init(c->buf + c->len, (unsigned)(sizeof(c->buf) - c->len));
}

static void on_client_closed(uv_handle_t *h)
{
    struct fake_client *c = h->data;

    free(c->held); /* never answered: a server that went away */
    free(c);
}

static void client_close(struct fake_client *c)
{
    struct fake_client **pp = &c->f->clients;

    while (*pp != c)
        pp = &(*pp)->next;
    *pp = c->next;
    uv_close((uv_handle_t *)&c->tcp, on_client_closed);
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct fake_client *c = s->data;
    char *argv[FAKE_REDIS_MAX_ARGS];
    size_t used;
    int argc;

    (void)buf;
    if (nread < 0 || (nread == 0 && c->len == sizeof(c->buf))) {
        client_close(c);
        return;
    }
    c->len += (size_t)nread;
    while ((used = parse(c->buf, c->len, &argc, argv)) > 0) {
        answer(c, argc, argv);
        while (argc > 0)
            free(argv[--argc]);
        memmove(c->buf, c->buf + used, c->len - used);
        c->len -= used;
    }
}

static void on_connection(uv_stream_t *server, int status)
{
    struct fake_redis *f = server->data;
    struct fake_client *c;

    if (status < 0 || (c = calloc(1, sizeof(*c))) == NULL)
        return;
    c->f = f;
    uv_tcp_init(server->loop, &c->tcp);
    c->tcp.data = c;
    if (uv_accept(server, (uv_stream_t *)&c->tcp) < 0) {
        uv_close((uv_handle_t *)&c->tcp, on_client_closed);
        return;
    }
    c->next = f->clients;
    f->clients = c;
    f->connections++;
    uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
}

static void on_tick(uv_timer_t *t)
{
    (void)t;
}

int fake_redis_start(uv_loop_t *loop, struct fake_redis *f, fake_redis_handler handler)
{
    struct sockaddr_in addr;
    struct sockaddr_storage got;
    int len = sizeof(got), rc;

    memset(f, 0, sizeof(*f));
    f->handler = handler;
    uv_ip4_addr("127.0.0.1", 0, &addr);
    uv_tcp_init(loop, &f->server);
    f->server.data = f;
    if ((rc = uv_tcp_bind(&f->server, (const struct sockaddr *)&addr, 0)) < 0 ||
        (rc = uv_listen((uv_stream_t *)&f->server, 16, on_connection)) < 0 ||
        (rc = uv_tcp_getsockname(&f->server, (struct sockaddr *)&got, &len)) < 0)
        return rc;
    f->port = ntohs(((struct sockaddr_in *)&got)->sin_port);
    uv_timer_init(loop, &f->tick);
    uv_timer_start(&f->tick, on_tick, 5, 5);
    return 0;
}

void fake_redis_drop_clients(struct fake_redis *f)
{
    while (f->clients != NULL)
        client_close(f->clients);
}

void fake_redis_close(struct fake_redis *f)
{
    fake_redis_drop_clients(f);
    uv_close((uv_handle_t *)&f->server, NULL);
    uv_close((uv_handle_t *)&f->tick, NULL);
}

int fake_redis_run_until(uv_loop_t *loop, fake_redis_pred pred, const void *arg,
                         unsigned timeout_ms)
{
    uint64_t end;

    uv_update_time(loop);
    end = uv_now(loop) + timeout_ms;
    while (!pred(arg) && uv_now(loop) < end)
        uv_run(loop, UV_RUN_ONCE);
    return pred(arg);
}

int fake_redis_never(const void *arg)
{
    (void)arg;
    return 0;
}
