/* redis.h -- one Redis connection on the service loop, kept up forever.
 *
 * Wraps a hiredis async context driven by the service loop. The connection
 * is made from REDIS_URL (redis://[[user]:password@]host[:port][/db]): the
 * host name is resolved off the loop (uv_getaddrinfo on the thread pool) on
 * every (re)connect, hiredis connects to the numeric address, and when an
 * address fails the next one is tried. The connection is authenticated,
 * switched to its db and checked to be a primary (ROLE) before it counts as
 * up. When it is lost -- or a command waits past command_timeout_ms, or
 * connecting takes longer than connect_timeout_ms, or any reply says "wrong
 * node" (READONLY, LOADING, MASTERDOWN) -- every pending callback gets a NULL
 * reply, listeners hear "down", and a reconnect (re-resolving the name) is
 * tried after a capped, jittered backoff.
 *
 * A blocking read (XREADGROUP BLOCK) must use a connection of its own: give
 * it a command_timeout_ms longer than its BLOCK. Loop thread only. */
#ifndef RIPPLE_REDIS_H
#define RIPPLE_REDIS_H

#include <stddef.h>

#include <uv.h>

#include <ripple/common.h>

struct redis; /* opaque */
struct redisReply;

#define REDIS_MAX_LISTENERS 8
#define REDIS_MAX_ADDRS 8 /* addresses of one resolution tried in turn */

/* What an error reply means for the command that got it. */
enum redis_error_class {
    REDIS_ERROR_PERMANENT,  /* no retry fixes it: WRONGTYPE, NOPERM, ERR (syntax, bad value) */
    REDIS_ERROR_TRANSIENT,  /* may pass: OOM, BUSY, TRYAGAIN, MISCONF, NOAUTH, anything unknown */
    REDIS_ERROR_WRONG_NODE, /* not a usable primary: READONLY, LOADING, MASTERDOWN */
};

struct redis_url {
    char host[256];
    unsigned port;      /* 6379 by default */
    unsigned db;        /* 0 by default */
    char user[128];     /* "" when absent */
    char password[256]; /* "" when absent */
};

struct redis_config {
    const char *url;             /* copied (parsed) */
    const char *name;            /* for logs, e.g. "commands"; copied */
    const char *log_scope;       /* the module whose lines these are (log_scope); borrowed,
                                    static storage; NULL: whatever scope is current */
    unsigned connect_timeout_ms; /* 0: 2000 */
    unsigned command_timeout_ms; /* 0: no watchdog */
    unsigned backoff_min_ms;     /* 0: 100 */
    unsigned backoff_max_ms;     /* 0: 5000 */
};

/* A reply callback. reply is borrowed and lives only during the call; NULL
 * when the connection was lost before the answer. A server error is a
 * reply of type REDIS_REPLY_ERROR. */
typedef void (*redis_reply_cb)(struct redis *r, struct redisReply *reply, void *data);
/* Told when the connection comes up (up = 1, after AUTH/SELECT) or goes
 * down (up = 0). */
typedef void (*redis_state_cb)(struct redis *r, int up, void *data);
typedef void (*redis_closed_cb)(void *data);

/* Classifies an error reply by its first word (msg is reply->str; NULL is
 * transient). Wrong-node errors also make the connection drop and reconnect
 * on its own (see the top of this file). */
enum redis_error_class redis_error_class(const char *msg);

/* Parses url. Returns 0, or -EINVAL with a message in err. */
CORE_MUST_CHECK int redis_url_parse(const char *url, struct redis_url *out, char *err,
                                    size_t errlen);

/* Returns 0 and sets *out, or -EINVAL (bad URL; message in err) or -ENOMEM.
 * Nothing connects until redis_start. */
CORE_MUST_CHECK int redis_new(uv_loop_t *loop, const struct redis_config *cfg, struct redis **out,
                              char *err, size_t errlen);
/* Starts connecting; reconnects on its own from then on. */
void redis_start(struct redis *r);
/* Adds a state listener. Returns 0 or -ENOSPC. */
CORE_MUST_CHECK int redis_listen(struct redis *r, redis_state_cb fn, void *data);
/* Removes the listener added with exactly fn and data, if any. */
void redis_unlisten(struct redis *r, redis_state_cb fn, const void *data);
int redis_is_up(const struct redis *r);

/* Sends a command (argv/argvlen as hiredis: binary-safe). Returns 0, after
 * which cb fires exactly once; or -ENOTCONN/-ENOMEM, and cb never fires.
 * cb may be NULL (fire and forget). */
CORE_MUST_CHECK int redis_command(struct redis *r, redis_reply_cb cb, void *data, int argc,
                                  const char **argv, const size_t *argvlen);
/* Commands sent and not yet answered. */
size_t redis_pending(const struct redis *r);

/* Drops the connection now (pending callbacks get NULL), as if lost; the
 * usual reconnect follows. */
void redis_reset(struct redis *r);

/* Drops the connection now (pending callbacks get NULL, listeners hear
 * "down") and never reconnects: redis_command fails with -ENOTCONN from
 * then on. For a stop deadline: r stays valid until redis_close. */
void redis_halt(struct redis *r);

/* Closes for good: pending callbacks get NULL, no reconnect, handles are
 * closed, r is freed, then closed_cb(data) fires. */
void redis_close(struct redis *r, redis_closed_cb closed_cb, void *data);

#endif
