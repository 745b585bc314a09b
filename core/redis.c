/* redis.c -- a Redis connection with reconnect. See redis.h.
 *
 * States: DOWN (a backoff timer is armed, or the next address is about to
 * be tried), RESOLVING (uv_getaddrinfo runs on the thread pool: hiredis 0.14
 * would resolve synchronously, on the loop, on every connect), CONNECTING
 * (hiredis context on a numeric address exists, TCP and then AUTH, SELECT
 * and ROLE in progress), UP. Every way of losing the context -- hiredis's
 * disconnect callback, a failed connect, our watchdog, a wrong-node reply,
 * redis_reset, redis_halt, redis_close -- goes through conn_lost(), which
 * tries the next address of the last resolution at once, or arms the
 * backoff (after which the name is resolved again), unless we are halted
 * or closing.
 *
 * The context is driven by our own small event adapter (a uv_poll on its
 * socket) rather than hiredis 0.14's adapters/libuv.h, which drops poll
 * errors on the floor: a refused connect or a reset socket then went
 * unnoticed until our watchdog fired. Ours hands an error to hiredis as a
 * read, so hiredis sees the failure at once and reports it.
 *
 * hiredis 0.14 frees the context itself after its disconnect callback (and
 * after a failed connect callback); redisAsyncFree is safe inside a reply
 * callback because hiredis defers it (REDIS_IN_CALLBACK) until the callback
 * returns, then gives every pending callback a NULL reply. Each command
 * carries a small struct with our callback, so a NULL reply (connection
 * lost) reaches the caller exactly once. */
#include <ripple/redis.h>

#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <hiredis/async.h>
#include <hiredis/hiredis.h>

#include <ripple/log.h>

#define WATCHDOG_MS 500

#define ADDR_LEN 46                        /* INET6_ADDRSTRLEN */
#define REDIS_OUT_KEEP ((size_t)64 * 1024) /* bytes of r->out kept between commands */

enum redis_state { REDIS_DOWN, REDIS_RESOLVING, REDIS_CONNECTING, REDIS_UP };

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
    int halted;           /* redis_halt: never connect again */

    /* The name is resolved off the loop on every (re)connect; the addresses
     * of one resolution are tried in turn. */
    uv_getaddrinfo_t resolver;
    int resolving;                         /* resolver in flight (may outlive a halt) */
    char addrs[REDIS_MAX_ADDRS][ADDR_LEN]; /* numeric */
    unsigned naddrs, next_addr;            /* next_addr == naddrs: resolve again */
    char addr[ADDR_LEN];                   /* the address of the current context, for logs */

    char *out;      /* owned: the RESP of the command being sent (format_command) */
    size_t out_cap; /* bytes allocated at out */
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
    uv_check_t check; /* flushes what was queued before it in the iteration ... */
    uv_idle_t idle;   /* ... and keeps the poll from blocking while some waits */
    int events;
    int flush;    /* commands wait in hiredis's buffer: written at the next flush */
    int flushing; /* inside flush: a write that does not finish polls for room */
    int closes;   /* handles still closing */
};

static void ev_scope(const struct redis_events *p)
{
    if (p->ac->data != NULL && ((struct redis *)p->ac->data)->log_scope != NULL)
        log_scope(((struct redis *)p->ac->data)->log_scope);
}

static void ev_on_poll(uv_poll_t *h, int status, int events)
{
    struct redis_events *p = h->data;

    if (p->ac == NULL)
        return;
    ev_scope(p);
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

static void ev_flush_stop(struct redis_events *p)
{
    p->flush = 0;
    uv_check_stop(&p->check);
    uv_idle_stop(&p->idle);
}

/* Writes the commands queued since the last flush, at the end of the loop
 * iteration rather than when the next poll says the socket is writable: a
 * command issued in a callback reaches Redis in the same iteration (its
 * reply can come back in the next), and a connected socket is not switched
 * to write interest and back -- two epoll_ctl calls -- for every command.
 * The check handle writes; the idle handle, while active, makes the poll
 * return at once, so a command queued after the idle phase (a group COMMIT
 * in a prepare callback relays its events) is not held up by a poll that
 * blocks until the next timer. Both write at whichever runs first. */
static void ev_flush(struct redis_events *p)
{
    if (!p->flush)
        return;
    ev_flush_stop(p);
    if (p->ac == NULL)
        return;
    ev_scope(p);
    p->flushing = 1;
    redisAsyncHandleWrite(p->ac); /* may disconnect: p lives until its close callbacks */
    p->flushing = 0;
}

static void ev_on_check(uv_check_t *h)
{
    ev_flush(h->data);
}

static void ev_on_idle(uv_idle_t *h)
{
    ev_flush(h->data);
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

    /* Connecting (the poll tells when it is done), or a flush that found
     * the socket's buffer full: wait for room. */
    if (p->flushing || p->ac == NULL || !(p->ac->c.flags & REDIS_CONNECTED)) {
        ev_update(p, p->events | UV_WRITABLE);
        return;
    }
    if (!p->flush && !(p->events & UV_WRITABLE)) {
        p->flush = 1;
        uv_check_start(&p->check, ev_on_check);
        uv_idle_start(&p->idle, ev_on_idle);
    }
}

static void ev_del_write(void *data)
{
    struct redis_events *p = data;

    if (p->flush)
        ev_flush_stop(p);
    if (p->events & UV_WRITABLE)
        ev_update(p, p->events & ~UV_WRITABLE);
}

static void ev_on_close(uv_handle_t *h)
{
    struct redis_events *p = h->data;

    if (--p->closes == 0)
        free(p);
}

static void ev_cleanup(void *data)
{
    struct redis_events *p = data;

    p->ac = NULL;
    p->flush = 0;
    p->closes = 3;
    uv_close((uv_handle_t *)&p->poll, ev_on_close);
    uv_close((uv_handle_t *)&p->check, ev_on_close);
    uv_close((uv_handle_t *)&p->idle, ev_on_close);
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
    /* cannot fail on an initialized loop */
    (void)uv_check_init(loop, &p->check);
    (void)uv_idle_init(loop, &p->idle);
    p->ac = ac;
    p->poll.data = p->check.data = p->idle.data = p;
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
 * Error replies
 * ------------------------------------------------------------------------- */

/* Does msg start with the word w (followed by a space or its end)? */
static int first_word_is(const char *msg, const char *w)
{
    size_t n = strlen(w);

    return strncmp(msg, w, n) == 0 && (msg[n] == ' ' || msg[n] == '\0');
}

enum redis_error_class redis_error_class(const char *msg)
{
    static const char *const wrong_node[] = {"READONLY", "LOADING", "MASTERDOWN"};
    static const char *const permanent[] = {"ERR", "WRONGTYPE", "NOPERM", "EXECABORT"};

    if (msg == NULL)
        return REDIS_ERROR_TRANSIENT;
    for (size_t i = 0; i < ARRAY_SIZE(wrong_node); i++) {
        if (first_word_is(msg, wrong_node[i]))
            return REDIS_ERROR_WRONG_NODE;
    }
    for (size_t i = 0; i < ARRAY_SIZE(permanent); i++) {
        if (first_word_is(msg, permanent[i]))
            return REDIS_ERROR_PERMANENT;
    }
    /* OOM, BUSY, TRYAGAIN, MISCONF, NOAUTH, CLUSTERDOWN, ... and anything we
     * do not know: retrying loses nothing, setting aside might */
    return REDIS_ERROR_TRANSIENT;
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

/* A connect attempt failed: says so once per outage (quietly while another
 * address of the same resolution is left to try). */
static void log_unreachable(struct redis *r, const char *why, int more)
{
    if (r->closing || r->halted)
        return;
    if (more) {
        log_debug("redis %s: cannot connect to %s:%u at %s: %s (trying the next address)", r->name,
                  r->url.host, r->url.port, r->addr, why);
    } else if (!r->logged_down) {
        log_warn("redis %s: cannot connect to %s:%u%s%s: %s (retrying)", r->name, r->url.host,
                 r->url.port, r->addr[0] ? " at " : "", r->addr, why);
        r->logged_down = 1;
    }
}

/* The context is gone (hiredis frees it, or already has). */
static void conn_lost(struct redis *r, const char *why)
{
    int was_up = r->state == REDIS_UP;
    int more = !was_up && r->next_addr < r->naddrs;

    r->ac = NULL;
    r->state = REDIS_DOWN;
    r->pending = 0;
    if (was_up) {
        r->naddrs = r->next_addr = 0; /* reconnect by name: it may point elsewhere now */
        if (!r->closing && !r->halted)
            log_warn("redis %s: connection to %s:%u lost: %s", r->name, r->url.host, r->url.port,
                     why);
        notify(r, 0);
    } else {
        log_unreachable(r, why, more);
    }
    if (r->closing || r->halted)
        return;
    if (more)
        uv_timer_start(&r->retry_timer, on_retry, 0, 0); /* the next address, at once */
    else
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

/* An error reply that says this server cannot serve us (demoted to a
 * replica, loading its data set): drop the connection once the caller has
 * seen the reply, so that we reconnect, resolving the name again, and are
 * not ready meanwhile. */
static void drop_if_wrong_node(struct redis *r, const redisAsyncContext *ac, const char *err)
{
    char why[128];

    if (r->ac != ac || r->closing || r->halted)
        return;
    snprintf(why, sizeof(why), "the server answered %.100s", err);
    conn_drop(r, why);
}

/* cppcheck-suppress constParameter ; hiredis's redisCallbackFn signature */
static void on_reply(redisAsyncContext *ac, void *reply, void *privdata)
{
    struct redis_cmd *cmd = privdata;
    struct redis *r = cmd->r;
    const redisReply *rep = reply;
    int wrong_node = 0;

    if (rep != NULL && r->ac == ac) {
        r->pending--;
        r->last_progress = uv_now(r->loop);
        wrong_node =
            rep->type == REDIS_REPLY_ERROR && redis_error_class(rep->str) == REDIS_ERROR_WRONG_NODE;
    }
    if (cmd->cb)
        cmd->cb(r, reply, cmd->data);
    free(cmd);
    /* rep lives until we return: hiredis frees it after this callback */
    if (wrong_node)
        drop_if_wrong_node(r, ac, rep->str);
}

/* Appends "<prefix><n>\r\n" at p; returns the end. */
static char *put_count(char *p, char prefix, size_t n)
{
    char digits[24];
    size_t i = sizeof(digits);

    do {
        digits[--i] = (char)('0' + n % 10);
        n /= 10;
    } while (n > 0);
    *p++ = prefix;
    memcpy(p, digits + i, sizeof(digits) - i);
    p += sizeof(digits) - i;
    *p++ = '\r';
    *p++ = '\n';
    return p;
}

/* The command as RESP (an array of bulk strings) in r->out; returns its
 * length, or 0 without memory. hiredis' own formatting
 * (redisFormatSdsCommandArgv) runs sdscatfmt for every argument, 6% of
 * payments' CPU in the credit bench; this is a length pass and a copy. The
 * buffer is kept for the next command unless it grew past REDIS_OUT_KEEP. */
static size_t format_command(struct redis *r, int argc, const char **argv, const size_t *argvlen)
{
    size_t need = 2 + 20 + 2, len;
    char *p;

    for (int i = 0; i < argc; i++)
        need += 1 + 20 + 2 + (argvlen ? argvlen[i] : strlen(argv[i])) + 2;
    if (need > r->out_cap) {
        char *grown = realloc(r->out, need);

        if (grown == NULL)
            return 0;
        r->out = grown;
        r->out_cap = need;
    }
    p = put_count(r->out, '*', (size_t)argc);
    for (int i = 0; i < argc; i++) {
        len = argvlen ? argvlen[i] : strlen(argv[i]);
        p = put_count(p, '$', len);
        memcpy(p, argv[i], len);
        p += len;
        *p++ = '\r';
        *p++ = '\n';
    }
    return (size_t)(p - r->out);
}

static int send_argv(struct redis *r, redis_reply_cb cb, void *data, int argc, const char **argv,
                     const size_t *argvlen)
{
    struct redis_cmd *cmd = malloc(sizeof(*cmd));
    size_t len = cmd != NULL ? format_command(r, argc, argv, argvlen) : 0;
    int rc;

    if (len == 0) {
        free(cmd);
        return -ENOMEM;
    }
    cmd->r = r;
    cmd->cb = cb;
    cmd->data = data;
    /* hiredis copies the bytes into its output buffer */
    rc = redisAsyncFormattedCommand(r->ac, on_reply, cmd, r->out, len);
    if (r->out_cap > REDIS_OUT_KEEP) {
        free(r->out);
        r->out = NULL;
        r->out_cap = 0;
    }
    if (rc != REDIS_OK) {
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
 * Connecting: resolve, TCP, then AUTH, SELECT and ROLE, then up
 * ------------------------------------------------------------------------- */

static void conn_up(struct redis *r)
{
    r->state = REDIS_UP;
    r->backoff_ms = 0;
    r->logged_down = 0;
    log_info("redis %s: connected to %s:%u (%s) db %u", r->name, r->url.host, r->url.port, r->addr,
             r->url.db);
    notify(r, 1);
}

/* AUTH and SELECT: any error ends the attempt. */
static void handshake_step(struct redis *r, const struct redisReply *reply, const char *what)
{
    char why[160];

    if (reply == NULL || r->state != REDIS_CONNECTING || reply->type != REDIS_REPLY_ERROR)
        return;
    if (redis_error_class(reply->str) != REDIS_ERROR_WRONG_NODE)
        log_error("redis %s: %s refused: %s", r->name, what, reply->str);
    snprintf(why, sizeof(why), "%s refused: %.100s", what, reply->str);
    conn_drop(r, why);
}

/* cppcheck-suppress constParameter ; the redis_reply_cb signature */
static void on_auth(struct redis *r, struct redisReply *reply, void *data)
{
    (void)data;
    handshake_step(r, reply, "AUTH");
}

/* cppcheck-suppress constParameter ; the redis_reply_cb signature */
static void on_select(struct redis *r, struct redisReply *reply, void *data)
{
    (void)data;
    handshake_step(r, reply, "SELECT");
}

/* The last step: only a primary will do (a replica answers every write
 * with READONLY). A server that will not say (ROLE refused by an ACL) is
 * taken at its word; a wrong-node error is not. */
/* cppcheck-suppress constParameter ; the redis_reply_cb signature */
static void on_role(struct redis *r, struct redisReply *reply, void *data)
{
    const struct redisReply *role;
    char why[160];

    (void)data;
    if (reply == NULL || r->state != REDIS_CONNECTING)
        return;
    if (reply->type == REDIS_REPLY_ERROR &&
        redis_error_class(reply->str) == REDIS_ERROR_WRONG_NODE) {
        snprintf(why, sizeof(why), "ROLE refused: %.100s", reply->str);
        conn_drop(r, why);
        return;
    }
    role = reply->type == REDIS_REPLY_ARRAY && reply->elements > 0 ? reply->element[0] : NULL;
    if (role != NULL && role->type == REDIS_REPLY_STRING && strcmp(role->str, "master") != 0) {
        snprintf(why, sizeof(why), "the server is a %.20s, not a primary", role->str);
        conn_drop(r, why);
        return;
    }
    conn_up(r);
}

static int send_handshake(struct redis *r)
{
    const char *argv[3];
    char db[16];
    int n = 0, rc = 0;

    if (r->url.password[0]) {
        argv[n++] = "AUTH";
        if (r->url.user[0])
            argv[n++] = r->url.user;
        argv[n++] = r->url.password;
        rc = send_argv(r, on_auth, NULL, n, argv, NULL);
    }
    snprintf(db, sizeof(db), "%u", r->url.db);
    argv[0] = "SELECT";
    argv[1] = db;
    if (rc == 0)
        rc = send_argv(r, on_select, NULL, 2, argv, NULL);
    argv[0] = "ROLE";
    if (rc == 0)
        rc = send_argv(r, on_role, NULL, 1, argv, NULL);
    return rc;
}

static void on_connect(const redisAsyncContext *ac, int status)
{
    struct redis *r = ac->data;

    if (r == NULL || r->ac != ac)
        return;
    if (status != REDIS_OK) {
        /* hiredis frees ac after this callback */
        conn_lost(r, ac->errstr[0] ? ac->errstr : "connect failed");
        return;
    }
    r->last_progress = uv_now(r->loop);
    if (send_handshake(r) < 0)
        conn_drop(r, "could not send the handshake");
}

/* Connects hiredis to one numeric address (hiredis resolves nothing then). */
static void conn_connect(struct redis *r, const char *addr)
{
    redisAsyncContext *ac;

    snprintf(r->addr, sizeof(r->addr), "%s", addr);
    ac = redisAsyncConnect(addr, (int)r->url.port);
    if (ac == NULL || ac->err) {
        char why[160];

        snprintf(why, sizeof(why), "%s", ac ? ac->errstr : "out of memory");
        if (ac)
            redisAsyncFree(ac);
        conn_lost(r, why);
        return;
    }
    ac->data = r;
    if (ev_attach(ac, r->loop) < 0) {
        redisAsyncFree(ac);
        conn_lost(r, "cannot poll the socket");
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

/* Keeps the numeric addresses of res, in its order, without repeats. */
static void keep_addrs(struct redis *r, const struct addrinfo *res)
{
    char buf[ADDR_LEN];

    for (; res != NULL && r->naddrs < REDIS_MAX_ADDRS; res = res->ai_next) {
        int rc = -1;
        unsigned i;

        if (res->ai_family == AF_INET)
            rc = uv_ip4_name((const struct sockaddr_in *)res->ai_addr, buf, sizeof(buf));
        else if (res->ai_family == AF_INET6)
            rc = uv_ip6_name((const struct sockaddr_in6 *)res->ai_addr, buf, sizeof(buf));
        for (i = 0; rc == 0 && i < r->naddrs && strcmp(r->addrs[i], buf) != 0; i++)
            ;
        if (rc == 0 && i == r->naddrs)
            memcpy(r->addrs[r->naddrs++], buf, sizeof(buf));
    }
}

static void close_step(struct redis *r);

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    struct redis *r = container_of(req, struct redis, resolver);
    char why[300];

    r->resolving = 0;
    if (r->closing) {
        uv_freeaddrinfo(res);
        close_step(r);
        return;
    }
    r->state = REDIS_DOWN;
    if (status == 0 && !r->halted)
        keep_addrs(r, res);
    uv_freeaddrinfo(res);
    if (r->halted)
        return;
    if (r->naddrs == 0) {
        snprintf(why, sizeof(why), "cannot resolve %s: %s", r->url.host,
                 status < 0 ? uv_strerror(status) : "no IPv4 or IPv6 address");
        conn_lost(r, why);
        return;
    }
    conn_start(r);
}

static int is_numeric(const char *host)
{
    unsigned char buf[sizeof(struct in6_addr)];

    return uv_inet_pton(AF_INET, host, buf) == 0 || uv_inet_pton(AF_INET6, host, buf) == 0;
}

/* Resolves the name on the thread pool (a numeric host needs no resolver). */
static void conn_resolve(struct redis *r)
{
    struct addrinfo hints;
    char port[8];
    int rc;

    r->naddrs = r->next_addr = 0;
    r->addr[0] = '\0';
    if (is_numeric(r->url.host) && strlen(r->url.host) < sizeof(r->addrs[0])) {
        memcpy(r->addrs[0], r->url.host, strlen(r->url.host) + 1);
        r->naddrs = 1;
        conn_start(r);
        return;
    }
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_protocol = IPPROTO_TCP;
    snprintf(port, sizeof(port), "%u", r->url.port);
    rc = uv_getaddrinfo(r->loop, &r->resolver, on_resolved, r->url.host, port, &hints);
    if (rc < 0) {
        conn_lost(r, uv_strerror(rc));
        return;
    }
    r->state = REDIS_RESOLVING;
    r->resolving = 1;
}

static void conn_start(struct redis *r)
{
    if (r->closing || r->halted || r->state != REDIS_DOWN)
        return;
    if (r->next_addr < r->naddrs)
        conn_connect(r, r->addrs[r->next_addr++]);
    else
        conn_resolve(r);
}

/* Connect and command timeouts: a peer that stops answering (a paused or
 * partitioned Redis) is treated as lost, so callers get their NULL replies
 * and the reconnect logic takes over. A slow resolver is not timed: it runs
 * off the loop, and glibc bounds it (resolv.conf timeout and attempts). */
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

void redis_halt(struct redis *r)
{
    if (r->halted)
        return;
    r->halted = 1;
    uv_timer_stop(&r->retry_timer);
    conn_drop(r, "stopping");
}

/* One of the closes redis_close waits for is done (two timers, and a
 * resolution in flight); the last frees r. */
static void close_step(struct redis *r)
{
    redis_closed_cb cb;
    void *data;

    if (--r->pending_closes > 0)
        return;
    cb = r->closed_cb;
    data = r->closed_data;
    free(r->out);
    free(r);
    if (cb)
        cb(data);
}

static void on_timer_closed(uv_handle_t *h)
{
    close_step(h->data);
}

void redis_close(struct redis *r, redis_closed_cb closed_cb, void *data)
{
    r->closing = 1;
    r->closed_cb = closed_cb;
    r->closed_data = data;
    r->nlisteners = 0; /* nobody is told about a loss we cause */
    conn_drop(r, "closing");
    r->pending_closes = 2;
    if (r->resolving) {
        /* its callback still comes (canceled, or with a result we drop) */
        r->pending_closes++;
        uv_cancel((uv_req_t *)&r->resolver);
    }
    uv_close((uv_handle_t *)&r->retry_timer, on_timer_closed);
    uv_close((uv_handle_t *)&r->watchdog_timer, on_timer_closed);
}
