/* test_redis.c -- core/redis against a scripted server (fake_redis.c) on a
 * private loop: error classes, connecting by name through the resolver, a
 * wrong-node reply dropping the connection and reconnecting, a replica never
 * counting as up, halting, and closing while a name resolves. Every test
 * closes everything and asserts uv_loop_close() == 0. */
#include <criterion/criterion.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <hiredis/hiredis.h>
#include <uv.h>

#include "fake_redis.h"
#include <ripple/log.h>
#include <ripple/redis.h>

#define RUN_UNTIL(x, pred, ms) fake_redis_run_until(&(x)->loop, (pred), (x), (ms))

struct fx {
    uv_loop_t loop;
    struct fake_redis fake;
    struct redis *r;
    int ups, downs, closed;
};

static void on_state(struct redis *r, int up, void *data)
{
    struct fx *x = data;

    (void)r;
    if (up)
        x->ups++;
    else
        x->downs++;
}

static void fx_open(struct fx *x, const char *host, fake_redis_handler handler)
{
    char url[128];
    char err[256];
    struct redis_config cfg = {
        .url = url, .name = "test", .backoff_min_ms = 10, .backoff_max_ms = 40};

    memset(x, 0, sizeof(*x));
    log_set_level(LOG_LEVEL_ERROR);
    cr_assert_eq(uv_loop_init(&x->loop), 0);
    cr_assert_eq(fake_redis_start(&x->loop, &x->fake, handler), 0);
    snprintf(url, sizeof(url), "redis://%s:%d", host, x->fake.port);
    cr_assert_eq(redis_new(&x->loop, &cfg, &x->r, err, sizeof(err)), 0, "%s", err);
    cr_assert_eq(redis_listen(x->r, on_state, x), 0);
}

static int is_up(const void *arg)
{
    const struct fx *x = arg;

    return redis_is_up(x->r);
}

static void on_closed(void *data)
{
    ((struct fx *)data)->closed = 1;
}

static void fx_close(struct fx *x)
{
    redis_close(x->r, on_closed, x);
    fake_redis_close(&x->fake);
    uv_run(&x->loop, UV_RUN_DEFAULT);
    cr_assert(x->closed);
    cr_assert_eq(uv_loop_close(&x->loop), 0);
}

/* A command's outcome, as its callback saw it. */
struct outcome {
    int fired;
    int type; /* REDIS_REPLY_*, or -1 for a NULL reply */
    char str[128];
};

static void on_reply(struct redis *r, struct redisReply *reply, void *data)
{
    struct outcome *o = data;

    (void)r;
    o->fired++;
    o->type = reply ? reply->type : -1;
    if (reply && reply->str)
        snprintf(o->str, sizeof(o->str), "%s", reply->str);
}

static int fired(const void *arg)
{
    return ((const struct outcome *)arg)->fired > 0;
}

static int send_cmd(struct fx *x, const char *cmd, struct outcome *o)
{
    const char *argv[] = {cmd};

    return redis_command(x->r, on_reply, o, 1, argv, NULL);
}

TestSuite(redis, .timeout = 20);

Test(redis, error_classes)
{
    cr_expect_eq(redis_error_class("READONLY You can't write against a read only replica."),
                 REDIS_ERROR_WRONG_NODE);
    cr_expect_eq(redis_error_class("LOADING Redis is loading the dataset in memory"),
                 REDIS_ERROR_WRONG_NODE);
    cr_expect_eq(redis_error_class("MASTERDOWN Link with MASTER is down"), REDIS_ERROR_WRONG_NODE);
    cr_expect_eq(redis_error_class("WRONGTYPE Operation against a key holding the wrong kind"),
                 REDIS_ERROR_PERMANENT);
    cr_expect_eq(redis_error_class("NOPERM this user has no permissions"), REDIS_ERROR_PERMANENT);
    cr_expect_eq(redis_error_class("ERR syntax error"), REDIS_ERROR_PERMANENT);
    cr_expect_eq(redis_error_class("OOM command not allowed when used memory > 'maxmemory'."),
                 REDIS_ERROR_TRANSIENT);
    cr_expect_eq(redis_error_class("BUSY Redis is busy running a script"), REDIS_ERROR_TRANSIENT);
    cr_expect_eq(redis_error_class("TRYAGAIN Multiple keys request during rehashing"),
                 REDIS_ERROR_TRANSIENT);
    cr_expect_eq(redis_error_class("MISCONF Redis is configured to save RDB snapshots"),
                 REDIS_ERROR_TRANSIENT);
    cr_expect_eq(redis_error_class("SOMETHINGNEW we do not know"), REDIS_ERROR_TRANSIENT);
    cr_expect_eq(redis_error_class("READONLYISH not the word"), REDIS_ERROR_TRANSIENT);
    cr_expect_eq(redis_error_class("ERRATIC not the word either"), REDIS_ERROR_TRANSIENT);
    cr_expect_eq(redis_error_class(""), REDIS_ERROR_TRANSIENT);
    cr_expect_eq(redis_error_class(NULL), REDIS_ERROR_TRANSIENT);
}

/* "localhost" goes through uv_getaddrinfo; should it give ::1 first, that
 * address is refused (the server listens on 127.0.0.1) and the next one is
 * tried at once. */
Test(redis, connects_by_name)
{
    struct fx x;
    struct outcome o = {0};

    fx_open(&x, "localhost", NULL);
    redis_start(x.r);
    cr_assert(RUN_UNTIL(&x, is_up, 5000), "never came up through localhost");
    cr_expect_eq(x.ups, 1);
    cr_assert_eq(send_cmd(&x, "PING", &o), 0);
    cr_assert(fake_redis_run_until(&x.loop, fired, &o, 5000));
    cr_expect_eq(o.fired, 1);
    cr_expect_eq(o.type, REDIS_REPLY_STATUS);
    cr_expect_str_eq(o.str, "PONG");
    fx_close(&x);
}

/* A command goes out in the loop iteration that queued it, not when the next
 * poll reports the socket writable: against a server on the same loop the
 * reply is in by the second iteration (it was the third when writes waited
 * for the poll). */
Test(redis, a_command_is_written_in_the_iteration_that_queued_it)
{
    struct fx x;
    struct outcome o = {0};
    int iterations = 0;

    fx_open(&x, "127.0.0.1", NULL);
    redis_start(x.r);
    cr_assert(RUN_UNTIL(&x, is_up, 5000));
    cr_assert_eq(send_cmd(&x, "PING", &o), 0);
    while (!o.fired && iterations < 10) {
        uv_run(&x.loop, UV_RUN_ONCE);
        iterations++;
    }
    cr_assert_eq(o.fired, 1);
    cr_expect_str_eq(o.str, "PONG");
    cr_expect_leq(iterations, 2, "the reply took %d loop iterations", iterations);
    fx_close(&x);
}

static const char *readonly_set(struct fake_redis *f, int argc, char **argv)
{
    (void)f;
    (void)argc;
    if (strcasecmp(argv[0], "SET") == 0)
        return "-READONLY You can't write against a read only replica.\r\n";
    return NULL;
}

static int reconnected(const void *arg)
{
    const struct fx *x = arg;

    return x->ups == 2;
}

Test(redis, wrong_node_reply_drops_and_reconnects)
{
    struct fx x;
    struct outcome set = {0}, ping = {0};

    fx_open(&x, "127.0.0.1", readonly_set);
    redis_start(x.r);
    cr_assert(RUN_UNTIL(&x, is_up, 5000));
    /* pipelined: PING's answer is read after READONLY, on a dropped context */
    cr_assert_eq(send_cmd(&x, "SET", &set), 0);
    cr_assert_eq(send_cmd(&x, "PING", &ping), 0);
    cr_assert(RUN_UNTIL(&x, reconnected, 5000), "no reconnect after READONLY");
    cr_expect_eq(set.fired, 1);
    cr_expect_eq(set.type, REDIS_REPLY_ERROR, "the caller sees the error itself");
    cr_expect_eq(strncmp(set.str, "READONLY", 8), 0);
    cr_expect_eq(ping.fired, 1);
    cr_expect_eq(ping.type, -1, "a command behind it gets NULL");
    cr_expect_eq(x.downs, 1);
    cr_expect_eq(x.fake.connections, 2);
    fx_close(&x);
}

static const char role_replica[] = "*5\r\n$5\r\nslave\r\n$9\r\n127.0.0.1\r\n:6379\r\n"
                                   "$9\r\nconnected\r\n:0\r\n";

static int retried(const void *arg)
{
    const struct fx *x = arg;

    return x->fake.connections >= 3;
}

Test(redis, replica_never_counts_as_up)
{
    struct fx x;

    fx_open(&x, "127.0.0.1", NULL);
    x.fake.role_reply = role_replica;
    redis_start(x.r);
    cr_assert(RUN_UNTIL(&x, retried, 5000), "no retries on a replica");
    cr_expect_eq(x.ups, 0);
    cr_expect_not(redis_is_up(x.r));
    x.fake.role_reply = NULL; /* promoted */
    cr_assert(RUN_UNTIL(&x, is_up, 5000), "never came up on the promoted server");
    fx_close(&x);
}

static const char *hang_blpop(struct fake_redis *f, int argc, char **argv)
{
    (void)f;
    (void)argc;
    return strcasecmp(argv[0], "BLPOP") == 0 ? FAKE_REDIS_HANG : NULL;
}

static int saw_blpop(const void *arg)
{
    const struct fx *x = arg;

    return x->fake.commands >= 3; /* SELECT, ROLE, BLPOP */
}

Test(redis, halt_fails_pending_commands_and_never_reconnects)
{
    struct fx x;
    struct outcome o = {0}, late = {0};

    fx_open(&x, "127.0.0.1", hang_blpop);
    redis_start(x.r);
    cr_assert(RUN_UNTIL(&x, is_up, 5000));
    cr_assert_eq(send_cmd(&x, "BLPOP", &o), 0);
    cr_assert(RUN_UNTIL(&x, saw_blpop, 5000));
    cr_assert_eq(o.fired, 0);
    redis_halt(x.r);
    cr_expect_eq(o.fired, 1, "the pending command is answered at once");
    cr_expect_eq(o.type, -1);
    cr_expect_eq(x.downs, 1);
    cr_expect_eq(send_cmd(&x, "PING", &late), -ENOTCONN);
    RUN_UNTIL(&x, fake_redis_never, 200); /* many backoffs' worth */
    cr_expect_eq(x.fake.connections, 1);
    cr_expect_not(redis_is_up(x.r));
    fx_close(&x);
}

Test(redis, close_while_resolving)
{
    struct fx x;

    fx_open(&x, "localhost", NULL);
    redis_start(x.r); /* the resolver is in flight on the thread pool */
    fx_close(&x);
}

Test(redis, server_gone_reconnects)
{
    struct fx x;

    fx_open(&x, "127.0.0.1", NULL);
    redis_start(x.r);
    cr_assert(RUN_UNTIL(&x, is_up, 5000));
    fake_redis_drop_clients(&x.fake);
    cr_assert(RUN_UNTIL(&x, reconnected, 5000));
    cr_expect_eq(x.downs, 1);
    fx_close(&x);
}

/* What the server parsed of the last ECHOALL: the arguments, each of its
 * own length (the fake copies them NUL-terminated). */
static struct {
    int argc;
    char args[4][48 * 1024];
} echoed;

static const char *record_echoall(struct fake_redis *f, int argc, char **argv)
{
    (void)f;
    if (strcasecmp(argv[0], "ECHOALL") != 0)
        return NULL;
    echoed.argc = argc;
    for (int i = 0; i < argc && i < 4; i++)
        snprintf(echoed.args[i], sizeof(echoed.args[i]), "%s", argv[i]);
    return "+OK\r\n";
}

Test(redis, commands_go_out_as_resp_with_each_arguments_length)
{
    static char big[40 * 1024 + 1];
    struct fx x;
    struct outcome o = {0}, o2 = {0};
    const char *argv[] = {"ECHOALL", "a\r\n$3\r\nb", "", big};
    const char *argv2[] = {"ECHOALL", "xyz-and-more", "p"};
    const size_t len2[] = {7, 3, 1}; /* lengths given: "xyz", not all of it */

    memset(big, 'z', sizeof(big) - 1);
    big[0] = '$';
    fx_open(&x, "127.0.0.1", record_echoall);
    redis_start(x.r);
    cr_assert(RUN_UNTIL(&x, is_up, 5000));
    cr_assert_eq(redis_command(x.r, on_reply, &o, 4, argv, NULL), 0);
    cr_assert(fake_redis_run_until(&x.loop, fired, &o, 5000));
    cr_assert_str_eq(o.str, "OK");
    cr_assert_eq(echoed.argc, 4);
    cr_assert_str_eq(echoed.args[1], argv[1], "CRLF and '$' inside an argument are data");
    cr_assert_str_eq(echoed.args[2], "");
    cr_assert_eq(strlen(echoed.args[3]), sizeof(big) - 1);
    cr_assert_eq(memcmp(echoed.args[3], big, sizeof(big) - 1), 0);
    cr_assert_eq(redis_command(x.r, on_reply, &o2, 3, argv2, len2), 0);
    cr_assert(fake_redis_run_until(&x.loop, fired, &o2, 5000));
    cr_assert_eq(echoed.argc, 3);
    cr_assert_str_eq(echoed.args[1], "xyz");
    cr_assert_str_eq(echoed.args[2], "p");
    fx_close(&x);
}
