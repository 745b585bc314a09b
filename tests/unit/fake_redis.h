/* fake_redis.h -- a scripted Redis server for the unit tests.
 *
 * Listens on 127.0.0.1 (a port the kernel picks) on the test's loop, takes
 * any number of connections, parses RESP commands (arrays of bulk strings,
 * bounded by FAKE_REDIS_MAX_ARGS and FAKE_REDIS_BUF) and answers each with the
 * reply the test's handler returns. AUTH, SELECT and PING answer as a healthy
 * primary does, and ROLE answers role_reply (a primary's by default), unless
 * the handler answers them first. It counts connections and commands, and
 * runs a short tick timer so that fake_redis_run_until checks often. */
#ifndef TESTS_UNIT_FAKE_REDIS_H
#define TESTS_UNIT_FAKE_REDIS_H

#include <uv.h>

#define FAKE_REDIS_MAX_ARGS 32
#define FAKE_REDIS_BUF 65536

struct fake_redis;
/* The RESP reply to send for argv (copied before the next call), NULL to
 * fall back to the defaults above, or FAKE_REDIS_HANG to never answer. argv
 * holds NUL-terminated copies, borrowed for the call. */
typedef const char *(*fake_redis_handler)(struct fake_redis *f, int argc, char **argv);

extern const char FAKE_REDIS_HANG[];

struct fake_redis {
    uv_tcp_t server;
    uv_timer_t tick; /* wakes uv_run every few ms */
    int port;
    unsigned connections; /* accepted so far */
    unsigned commands;    /* received so far */
    fake_redis_handler handler;
    const char *role_reply; /* NULL: a primary's */
    int holding;            /* replies are kept, in order, until fake_redis_release */
    void *data;             /* the test's */
    struct fake_client *clients;
    int closing;
};

/* Listens on loop; returns 0 or a libuv error. */
int fake_redis_start(uv_loop_t *loop, struct fake_redis *f, fake_redis_handler handler);
/* Sends every reply kept while f->holding (a handler sets it: the replies
 * to its command and to every command after it wait), and stops holding. */
void fake_redis_release(struct fake_redis *f);
/* Closes every connection, as a server that goes away does. */
void fake_redis_drop_clients(struct fake_redis *f);
/* Closes the server, its connections and its timer; run the loop
 * afterwards. */
void fake_redis_close(struct fake_redis *f);

/* Runs loop until pred(arg) holds or timeout_ms have passed; returns
 * pred(arg). fake_redis_never makes it a plain wait. */
typedef int (*fake_redis_pred)(const void *arg);
int fake_redis_run_until(uv_loop_t *loop, fake_redis_pred pred, const void *arg,
                         unsigned timeout_ms);
int fake_redis_never(const void *arg);

#endif
