/* redis.c -- a Redis connection with reconnect. See redis.h.
 *
 * States: DOWN (a backoff timer is armed), CONNECTING (hiredis context
 * exists, TCP and then AUTH/SELECT in progress), UP. Every way of losing
 * the context -- hiredis's disconnect callback, a failed connect, our
 * watchdog, redis_reset, redis_close -- goes through conn_lost(), which
 * arms the reconnect unless we are closing.
 *
 * The context is driven by our own small event adapter (a uv_poll on its
 * socket) rather than hiredis 0.14's adapters/libuv.h, which drops poll
 * errors on the floor: a refused connect or a reset socket then went
 * unnoticed until our watchdog fired. Ours hands an error to hiredis as a
 * read, so hiredis sees the failure at once and reports it.
 *
 * hiredis 0.14 frees the context itself after its disconnect callback (and
 * after a failed connect callback); redisAsyncFree is safe inside a reply
 * callback because hiredis defers it (REDIS_IN_CALLBACK). Each command
 * carries a small struct with our callback, so a NULL reply (connection
 * lost) reaches the caller exactly once. */
#include "redis.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <hiredis/async.h>
#include <hiredis/hiredis.h>

#include "log.h"

#define WATCHDOG_MS 500

enum redis_state { REDIS_DOWN, REDIS_CONNECTING, REDIS_UP };

struct redis {
    uv_loop_t *loop;
    struct redis_url url;
    char name[32];
    const char *log_scope; /* borrowed: a module's name */
    unsigned connect_timeout_ms, command_timeout_ms, backoff_min_ms, backoff_max_ms;
    unsigned backoff_ms; /* next delay before jitter */
    redisAsyncContext *ac;
    enum redis_state state;
    uv_timer_t retry_timer;    /* reconnect backoff */
    uv_timer_t watchdog_timer; /* connect and command timeouts */
    uint64_t last_progress;    /* ms: connect started, or last reply */
    size_t pending;
    int closing;
    unsigned pending_closes;
    redis_closed_cb closed_cb;
    void *closed_data;
    struct {
        redis_state_cb fn;
        void *data;
    } listeners[REDIS_MAX_LISTENERS];
    size_t nlisteners;
    int logged_down;      /* "unreachable" logged once per outage */
    const char *drop_why; /* why we dropped the context ourselves, for the log */
};

struct redis_cmd {
    struct redis *r;
    redis_reply_cb cb;
    void *data;
};

static void conn_start(struct redis *r);

/* ---------------------------------------------------------------------------
 * The event adapter: hiredis asks for read/write interest, we poll
 * ------------------------------------------------------------------------- */

struct redis_events {
    redisAsyncContext *ac; /* NULL once hiredis has cleaned up */
    uv_poll_t poll;
    int events;
};

static void ev_on_poll(uv_poll_t *h, int status, int events)
{
    struct redis_events *p = h->data;

    if (p->ac == NULL)
        return;
    if (p->ac->data != NULL && ((struct redis *)p->ac->data)->log_scope != NULL)
        log_scope(((struct redis *)p->ac->data)->log_scope);
    /* An error (libuv has stopped the handle): let hiredis read, so that it
     * finds the error itself and disconnects, or fails the connect. */
    if (status < 0)
        events = UV_READABLE | (p->events & UV_WRITABLE);
    if (events & UV_READABLE)
        redisAsyncHandleRead(p->ac);
    if (p->ac != NULL && (events & UV_WRITABLE))
        redisAsyncHandleWrite(p->ac);
}

static void ev_update(struct redis_events *p, int events)
{
    p->events = events;
    if (events)
        uv_poll_start(&p->poll, events, ev_on_poll);
    else
        uv_poll_stop(&p->poll);
}

static void ev_add_read(void *data)
{
    struct redis_events *p = data;

    ev_update(p, p->events | UV_READABLE);
}

static void ev_del_read(void *data)
{
    struct redis_events *p = data;

    ev_update(p, p->events & ~UV_READABLE);
}

static void ev_add_write(void *data)
{
    struct redis_events *p = data;

    ev_update(p, p->events | UV_WRITABLE);
}

static void ev_del_write(void *data)
{
    struct redis_events *p = data;

    ev_update(p, p->events & ~UV_WRITABLE);
}

static void ev_on_close(uv_handle_t *h)
{
    free(h->data);
}

static void ev_cleanup(void *data)
{
    struct redis_events *p = data;

    p->ac = NULL;
    uv_close((uv_handle_t *)&p->poll, ev_on_close);
}

static int ev_attach(redisAsyncContext *ac, uv_loop_t *loop)
{
    struct redis_events *p;

    if (ac->ev.data != NULL)
        return -EBUSY;
    p = calloc(1, sizeof(*p));
    if (p == NULL)
        return -ENOMEM;
    if (uv_poll_init_socket(loop, &p->poll, ac->c.fd) != 0) {
        free(p);
        return -EIO;
    }
    p->ac = ac;
    p->poll.data = p;
    ac->ev.addRead = ev_add_read;
    ac->ev.delRead = ev_del_read;
    ac->ev.addWrite = ev_add_write;
    ac->ev.delWrite = ev_del_write;
    ac->ev.cleanup = ev_cleanup;
    ac->ev.data = p;
    return 0;
}

/* ---------------------------------------------------------------------------
 * URL
 * ------------------------------------------------------------------------- */

/* The last c in s[0..n), or NULL (memrchr, without _GNU_SOURCE). */
static const char *last_char(const char *s, size_t n, char c)
{
    while (n > 0) {
        if (s[--n] == c)
            return s + n;
    }
    return NULL;
}

static int copy_span(char *dst, size_t cap, const char *s, size_t n)
{
    if (n >= cap)
        return -EINVAL;
    memcpy(dst, s, n);
    dst[n] = '\0';
    return 0;
}

static int parse_uint(const char *s, size_t n, unsigned long max, unsigned *out)
{
    unsigned long v = 0;

    if (n == 0 || n > 10)
        return -EINVAL;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -EINVAL;
        v = v * 10 + (unsigned long)(s[i] - '0');
    }
    if (v > max)
        return -EINVAL;
    *out = (unsigned)v;
    return 0;
}

/* userinfo is "[user]:password" or "password"-less "user". */
static int parse_userinfo(struct redis_url *u, const char *s, size_t n)
{
    const char *colon = memchr(s, ':', n);

    if (colon == NULL)
        return copy_span(u->user, sizeof(u->user), s, n);
    if (copy_span(u->user, sizeof(u->user), s, (size_t)(colon - s)) < 0)
        return -EINVAL;
    return copy_span(u->password, sizeof(u->password), colon + 1, n - (size_t)(colon - s) - 1);
}

static int parse_hostport(struct redis_url *u, const char *s, size_t n)
{
    const char *colon = last_char(s, n, ':');

    if (colon == NULL)
        return n == 0 ? -EINVAL : copy_span(u->host, sizeof(u->host), s, n);
    if (colon == s || parse_uint(colon + 1, n - (size_t)(colon - s) - 1, 65535, &u->port) < 0 ||
        u->port == 0)
        return -EINVAL;
    return copy_span(u->host, sizeof(u->host), s, (size_t)(colon - s));
}

int redis_url_parse(const char *url, struct redis_url *out, char *err, size_t errlen)
{
    static const char scheme[] = "redis://";
    const char *p, *at, *slash, *end;

    memset(out, 0, sizeof(*out));
    out->port = 6379;
    if (strncmp(url, scheme, sizeof(scheme) - 1) != 0)
        goto out_bad;
    p = url + sizeof(scheme) - 1;
    end = p + strlen(p);
    slash = memchr(p, '/', (size_t)(end - p));
    if (slash == NULL)
        slash = end;
    at = last_char(p, (size_t)(slash - p), '@');
    if (at != NULL) {
        if (parse_userinfo(out, p, (size_t)(at - p)) < 0)
            goto out_bad;
        p = at + 1;
    }
    if (parse_hostport(out, p, (size_t)(slash - p)) < 0)
        goto out_bad;
    if (slash < end && slash + 1 < end &&
        parse_uint(slash + 1, (size_t)(end - slash - 1), 15, &out->db) < 0)
        goto out_bad;
    return 0;

out_bad:
    snprintf(err, errlen,
             "config: REDIS_URL must look like redis://[:password@]host[:port][/db], with a "
             "port from 1 to 65535 and a db from 0 to 15");
    return -EINVAL;
}

/* ---------------------------------------------------------------------------
 * State
 * ------------------------------------------------------------------------- */

static void notify(struct redis *r, int up)
{
    for (size_t i = 0; i < r->nlisteners; i++)
        r->listeners[i].fn(r, up, r->listeners[i].data);
}

static void on_retry(uv_timer_t *t)
{
    struct redis *r = t->data;

    if (r->log_scope != NULL)
        log_scope(r->log_scope);
    conn_start(r);
}

static void schedule_retry(struct redis *r)
{
    unsigned base = r->backoff_ms ? r->backoff_ms : r->backoff_min_ms;
    unsigned delay = base / 2 + (unsigned)(random() % (base / 2 + 1)); /* jitter: [base/2, base] */

    r->backoff_ms = base * 2 > r->backoff_max_ms ? r->backoff_max_ms : base * 2;
    uv_timer_start(&r->retry_timer, on_retry, delay, 0);
}

/* The context is gone (hiredis frees it, or already has). */
static void conn_lost(struct redis *r, const char *why)
{
    int was_up = r->state == REDIS_UP;

    r->ac = NULL;
    r->state = REDIS_DOWN;
    r->pending = 0;
    if (was_up) {
        if (!r->closing)
            log_warn("redis %s: connection lost: %s", r->name, why);
        notify(r, 0);
    } else if (!r->logged_down && !r->closing) {
        log_warn("redis %s: cannot connect to %s:%u: %s (retrying)", r->name, r->url.host,
                 r->url.port, why);
        r->logged_down = 1;
    }
    if (!r->closing)
        schedule_retry(r);
}

static void on_disconnect(const redisAsyncContext *ac, int status)
{
    struct redis *r = ac->data;

    (void)status;
    if (r != NULL && r->ac == ac)
        conn_lost(r, r->drop_why ? r->drop_why : ac->errstr[0] ? ac->errstr : "closed");
}

/* Drops the context now. A context that never connected gets no disconnect
 * callback from hiredis, so we report the loss ourselves. */
static void conn_drop(struct redis *r, const char *why)
{
    redisAsyncContext *ac = r->ac;
    int connected;

    if (ac == NULL)
        return;
    connected = (ac->c.flags & REDIS_CONNECTED) != 0;
    if (!connected)
        ac->data = NULL; /* pending callbacks only */
    r->drop_why = why;
    redisAsyncFree(ac);
    r->drop_why = NULL;
    if (!connected || r->ac == ac)
        conn_lost(r, why);
}

/* ---------------------------------------------------------------------------
 * Commands
 * ------------------------------------------------------------------------- */

/* cppcheck-suppress constParameter ; hiredis's redisCallbackFn signature */
static void on_reply(redisAsyncContext *ac, void *reply, void *privdata)
{
    struct redis_cmd *cmd = privdata;
    struct redis *r = cmd->r;

    if (reply != NULL && r->ac == ac) {
        r->pending--;
        r->last_progress = uv_now(r->loop);
    }
    if (cmd->cb)
        cmd->cb(r, reply, cmd->data);
    free(cmd);
}

static int send_argv(struct redis *r, redis_reply_cb cb, void *data, int argc, const char **argv,
                     const size_t *argvlen)
{
    struct redis_cmd *cmd = malloc(sizeof(*cmd));

    if (cmd == NULL)
        return -ENOMEM;
    cmd->r = r;
    cmd->cb = cb;
    cmd->data = data;
    if (redisAsyncCommandArgv(r->ac, on_reply, cmd, argc, argv, argvlen) != REDIS_OK) {
        free(cmd);
        return -ENOTCONN;
    }
    if (r->pending++ == 0)
        r->last_progress = uv_now(r->loop);
    return 0;
}

int redis_command(struct redis *r, redis_reply_cb cb, void *data, int argc, const char **argv,
                  const size_t *argvlen)
{
    if (r->state != REDIS_UP || r->ac == NULL)
        return -ENOTCONN;
    return send_argv(r, cb, data, argc, argv, argvlen);
}

size_t redis_pending(const struct redis *r)
{
    return r->pending;
}

/* ---------------------------------------------------------------------------
 * Connecting: TCP, then AUTH and SELECT, then up
 * ------------------------------------------------------------------------- */

/* cppcheck-suppress constParameter ; the redis_reply_cb signature */
static void on_handshake(struct redis *r, struct redisReply *reply, void *data)
{
    int last = data != NULL;

    if (reply == NULL || r->state != REDIS_CONNECTING)
        return;
    if (reply->type == REDIS_REPLY_ERROR) {
        log_error("redis %s: %s refused: %s", r->name, last ? "SELECT/PING" : "AUTH", reply->str);
        conn_drop(r, "handshake refused");
        return;
    }
    if (!last)
        return;
    r->state = REDIS_UP;
    r->backoff_ms = 0;
    r->logged_down = 0;
    log_info("redis %s: connected to %s:%u db %u", r->name, r->url.host, r->url.port, r->url.db);
    notify(r, 1);
}

static void on_connect(const redisAsyncContext *ac, int status)
{
    struct redis *r = ac->data;
    char db[16];
    const char *argv[3];
    int rc = 0;

    if (r == NULL || r->ac != ac)
        return;
    if (status != REDIS_OK) {
        /* hiredis frees ac after this callback */
        conn_lost(r, ac->errstr[0] ? ac->errstr : "connect failed");
        return;
    }
    r->last_progress = uv_now(r->loop);
    if (r->url.password[0]) {
        int n = 0;

        argv[n++] = "AUTH";
        if (r->url.user[0])
            argv[n++] = r->url.user;
        argv[n++] = r->url.password;
        rc = send_argv(r, on_handshake, NULL, n, argv, NULL);
    }
    snprintf(db, sizeof(db), "%u", r->url.db);
    argv[0] = "SELECT";
    argv[1] = db;
    if (rc == 0)
        rc = send_argv(r, on_handshake, r, 2, argv, NULL);
    if (rc < 0)
        conn_drop(r, "could not send the handshake");
}

static void conn_start(struct redis *r)
{
    redisAsyncContext *ac;

    if (r->closing || r->ac != NULL)
        return;
    ac = redisAsyncConnect(r->url.host, (int)r->url.port);
    if (ac == NULL || ac->err) {
        const char *why = ac ? ac->errstr : "out of memory";

        log_warn("redis %s: connect to %s:%u failed at once: %s", r->name, r->url.host, r->url.port,
                 why);
        if (ac)
            redisAsyncFree(ac);
        schedule_retry(r);
        return;
    }
    ac->data = r;
    if (ev_attach(ac, r->loop) < 0) {
        redisAsyncFree(ac);
        schedule_retry(r);
        return;
    }
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    r->ac = ac;
    r->state = REDIS_CONNECTING;
    r->pending = 0;
    uv_update_time(r->loop); /* a slow start must not look like a slow connect */
    r->last_progress = uv_now(r->loop);
}

/* Connect and command timeouts: a peer that stops answering (a paused or
 * partitioned Redis) is treated as lost, so callers get their NULL replies
 * and the reconnect logic takes over. */
static void on_watchdog(uv_timer_t *t)
{
    struct redis *r = t->data;
    uint64_t idle = uv_now(r->loop) - r->last_progress;

    if (r->log_scope != NULL)
        log_scope(r->log_scope);
    if (r->state == REDIS_CONNECTING && idle > r->connect_timeout_ms)
        conn_drop(r, "connect timed out");
    else if (r->state == REDIS_UP && r->command_timeout_ms && r->pending > 0 &&
             idle > r->command_timeout_ms)
        conn_drop(r, "a command timed out");
}

/* ---------------------------------------------------------------------------
 * Life cycle
 * ------------------------------------------------------------------------- */

int redis_new(uv_loop_t *loop, const struct redis_config *cfg, struct redis **out, char *err,
              size_t errlen)
{
    struct redis *r = calloc(1, sizeof(*r));
    int rc;

    if (r == NULL)
        return -ENOMEM;
    rc = redis_url_parse(cfg->url, &r->url, err, errlen);
    if (rc < 0) {
        free(r);
        return rc;
    }
    r->loop = loop;
    snprintf(r->name, sizeof(r->name), "%s", cfg->name ? cfg->name : "main");
    r->log_scope = cfg->log_scope;
    r->connect_timeout_ms = cfg->connect_timeout_ms ? cfg->connect_timeout_ms : 2000;
    r->command_timeout_ms = cfg->command_timeout_ms;
    r->backoff_min_ms = cfg->backoff_min_ms ? cfg->backoff_min_ms : 100;
    r->backoff_max_ms = cfg->backoff_max_ms ? cfg->backoff_max_ms : 5000;
    uv_timer_init(loop, &r->retry_timer);
    uv_timer_init(loop, &r->watchdog_timer);
    r->retry_timer.data = r->watchdog_timer.data = r;
    *out = r;
    return 0;
}

void redis_start(struct redis *r)
{
    uv_timer_start(&r->watchdog_timer, on_watchdog, WATCHDOG_MS, WATCHDOG_MS);
    conn_start(r);
}

int redis_listen(struct redis *r, redis_state_cb fn, void *data)
{
    if (r->nlisteners == REDIS_MAX_LISTENERS)
        return -ENOSPC;
    r->listeners[r->nlisteners].fn = fn;
    r->listeners[r->nlisteners].data = data;
    r->nlisteners++;
    return 0;
}

void redis_unlisten(struct redis *r, redis_state_cb fn, const void *data)
{
    for (size_t i = 0; i < r->nlisteners; i++) {
        if (r->listeners[i].fn == fn && r->listeners[i].data == data) {
            memmove(&r->listeners[i], &r->listeners[i + 1],
                    (r->nlisteners - i - 1) * sizeof(r->listeners[0]));
            r->nlisteners--;
            return;
        }
    }
}

int redis_is_up(const struct redis *r)
{
    return r->state == REDIS_UP;
}

void redis_reset(struct redis *r)
{
    conn_drop(r, "reset");
}

static void on_timer_closed(uv_handle_t *h)
{
    struct redis *r = h->data;
    redis_closed_cb cb;
    void *data;

    if (--r->pending_closes > 0)
        return;
    cb = r->closed_cb;
    data = r->closed_data;
    free(r);
    if (cb)
        cb(data);
}

void redis_close(struct redis *r, redis_closed_cb closed_cb, void *data)
{
    r->closing = 1;
    r->closed_cb = closed_cb;
    r->closed_data = data;
    r->nlisteners = 0; /* nobody is told about a loss we cause */
    conn_drop(r, "closing");
    r->pending_closes = 2;
    uv_close((uv_handle_t *)&r->retry_timer, on_timer_closed);
    uv_close((uv_handle_t *)&r->watchdog_timer, on_timer_closed);
}
