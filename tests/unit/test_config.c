/* test_config.c -- core/config: defaults, required and bounded settings, and
 * error messages that name the variable. Criterion runs each test in its own
 * process, so setenv/unsetenv here never leaks into another test; setup()
 * clears every variable config reads, whatever the caller's shell exported. */
#include <criterion/criterion.h>

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <ripple/config.h>

#define GOOD_SECRET "0123456789abcdef0123456789abcdef"

static const char *const vars[] = {
    "PORT",
    "HOST",
    "REDIS_URL",
    "DB_PATH",
    "JWT_SECRET",
    "LOG_LEVEL",
    "CONSUMER_NAME",
    "HTTP_MAX_HEADER_BYTES",
    "HTTP_MAX_HEADERS",
    "HTTP_MAX_BODY_BYTES",
    "HTTP_MAX_CONNECTIONS",
    "HTTP_HEADER_TIMEOUT_MS",
    "HTTP_IDLE_TIMEOUT_MS",
    "HTTP_BODY_TIMEOUT_MS",
    "SHUTDOWN_TIMEOUT_MS",
    "CONSUMER_BATCH",
    "MAX_DELIVERIES",
    "RECLAIM_IDLE_MS",
    "STREAM_MAXLEN",
    "ORDERS_PORT",
    "ORDERS_DB_PATH",
    "ORDERS_HOST",
    "ORDERS_CONSUMER_BATCH",
    "ORDERS_REDIS_URL",
    "USERS_PORT",
    "EMAIL_SENDER_PORT",
};

static struct config cfg;
static char err[CONFIG_ERR_MAX];

static void setup(void)
{
    for (size_t i = 0; i < sizeof(vars) / sizeof(vars[0]); i++)
        cr_assert_eq(unsetenv(vars[i]), 0);
    cr_assert_eq(setenv("JWT_SECRET", GOOD_SECRET, 1), 0);
    err[0] = '\0';
}

TestSuite(config, .init = setup);

static int load(const char *service, unsigned port)
{
    return config_load(&cfg, service, port, 0, err, sizeof(err));
}

/* Loading with name=value must fail and the message must contain want. */
static void expect_error(const char *name, const char *value, const char *want)
{
    cr_assert_eq(setenv(name, value, 1), 0);
    err[0] = '\0';
    cr_expect_eq(load("users", 8001), -EINVAL, "%s=%s was accepted", name, value);
    cr_expect_not_null(strstr(err, want), "%s=%s: message \"%s\" lacks \"%s\"", name, value, err,
                       want);
    cr_assert_eq(unsetenv(name), 0);
}

Test(config, defaults)
{
    cr_assert_eq(load("users", 8001), 0, "%s", err);
    cr_assert_str_eq(cfg.service, "users");
    cr_assert_eq(cfg.port, 8001);
    cr_assert_str_eq(cfg.host, "127.0.0.1");
    cr_assert_str_eq(cfg.redis_url, "redis://127.0.0.1:6379");
    cr_assert_str_eq(cfg.db_path, "var/users.db");
    cr_assert_str_eq(cfg.jwt_secret, GOOD_SECRET);
    cr_assert_str_eq(cfg.log_level, "info");
    cr_assert_eq(cfg.http_max_header_bytes, 16384);
    cr_assert_eq(cfg.http_max_headers, 100);
    cr_assert_eq(cfg.http_max_body_bytes, 1048576);
    cr_assert_eq(cfg.http_max_connections, 4096);
    cr_assert_eq(cfg.http_header_timeout_ms, 10000);
    cr_assert_eq(cfg.http_idle_timeout_ms, 60000);
    cr_assert_eq(cfg.http_body_timeout_ms, 30000);
    cr_assert_eq(cfg.consumer_batch, 512);
    cr_assert_eq(cfg.max_deliveries, 5);
    cr_assert_eq(cfg.reclaim_idle_ms, 30000);
    cr_assert_eq(cfg.stream_maxlen, 1000000);
    cr_assert_neq(cfg.consumer_name[0], '\0');
    cr_assert_str_eq(cfg.prefix, "USERS_");
}

Test(config, db_path_default_follows_service)
{
    cr_assert_eq(load("orders", 8002), 0, "%s", err);
    cr_assert_str_eq(cfg.db_path, "var/orders.db");
    cr_assert_eq(cfg.port, 8002);
}

Test(config, environment_overrides_defaults)
{
    cr_assert_eq(setenv("PORT", "9090", 1), 0);
    cr_assert_eq(setenv("HOST", "0.0.0.0", 1), 0);
    cr_assert_eq(setenv("DB_PATH", "/tmp/x/users.db", 1), 0);
    cr_assert_eq(setenv("LOG_LEVEL", "debug", 1), 0);
    cr_assert_eq(setenv("CONSUMER_BATCH", "16", 1), 0);
    cr_assert_eq(load("users", 8001), 0, "%s", err);
    cr_assert_eq(cfg.port, 9090);
    cr_assert_str_eq(cfg.host, "0.0.0.0");
    cr_assert_str_eq(cfg.db_path, "/tmp/x/users.db");
    cr_assert_str_eq(cfg.log_level, "debug");
    cr_assert_eq(cfg.consumer_batch, 16);
}

Test(config, empty_value_means_default)
{
    cr_assert_eq(setenv("PORT", "", 1), 0);
    cr_assert_eq(load("users", 8001), 0, "%s", err);
    cr_assert_eq(cfg.port, 8001);
}

Test(config, port_out_of_range)
{
    expect_error("PORT", "70000", "PORT");
    expect_error("PORT", "65536", "PORT");
    expect_error("PORT", "0", "PORT");
    expect_error("PORT", "-1", "PORT");
    expect_error("PORT", "99999999999999999999999", "PORT");
    cr_assert_eq(setenv("PORT", "65535", 1), 0);
    cr_assert_eq(load("users", 8001), 0, "%s", err);
    cr_assert_eq(cfg.port, 65535);
}

Test(config, port_not_numeric)
{
    expect_error("PORT", "abc", "PORT");
    expect_error("PORT", "80a", "PORT");
    expect_error("PORT", " -1", "PORT");
    expect_error("PORT", "+80", "PORT");
}

Test(config, jwt_secret_required)
{
    cr_assert_eq(unsetenv("JWT_SECRET"), 0);
    cr_assert_eq(load("users", 8001), -EINVAL);
    cr_assert_not_null(strstr(err, "JWT_SECRET is required"), "%s", err);
    expect_error("JWT_SECRET", "", "JWT_SECRET is required");
}

Test(config, jwt_secret_too_short)
{
    expect_error("JWT_SECRET", "0123456789abcdef0123456789abcde", "JWT_SECRET"); /* 31 bytes */
    cr_assert_null(strstr(err, "0123456789"), "the message must not echo the secret: %s", err);
}

Test(config, log_level_checked)
{
    expect_error("LOG_LEVEL", "verbose", "LOG_LEVEL");
    expect_error("LOG_LEVEL", "INFO", "LOG_LEVEL");
    cr_assert_eq(setenv("LOG_LEVEL", "error", 1), 0);
    cr_assert_eq(load("users", 8001), 0, "%s", err);
}

Test(config, db_path_too_long)
{
    char path[400];

    memset(path, 'p', sizeof(path) - 1);
    path[sizeof(path) - 1] = '\0';
    expect_error("DB_PATH", path, "DB_PATH");
}

Test(config, numeric_limits_named)
{
    expect_error("HTTP_MAX_BODY_BYTES", "1x", "HTTP_MAX_BODY_BYTES");
    expect_error("CONSUMER_BATCH", "0", "CONSUMER_BATCH");
    expect_error("CONSUMER_BATCH", "1025", "CONSUMER_BATCH");
    expect_error("MAX_DELIVERIES", "-3", "MAX_DELIVERIES");
    expect_error("HTTP_BODY_TIMEOUT_MS", "0", "HTTP_BODY_TIMEOUT_MS");
    expect_error("HTTP_BODY_TIMEOUT_MS", "3600001", "HTTP_BODY_TIMEOUT_MS");
}

Test(config, config_uint_and_config_str)
{
    unsigned long v = 0;
    const char *s = NULL;

    cr_assert_eq(config_uint("RIPPLE_TEST_UNSET", 7, 1, 10, &v, err, sizeof(err)), 0);
    cr_assert_eq(v, 7);
    cr_assert_eq(setenv("RIPPLE_TEST_N", "10", 1), 0);
    cr_assert_eq(config_uint("RIPPLE_TEST_N", 7, 1, 10, &v, err, sizeof(err)), 0);
    cr_assert_eq(v, 10);
    cr_assert_eq(config_uint("RIPPLE_TEST_N", 7, 1, 9, &v, err, sizeof(err)), -EINVAL);
    cr_assert_not_null(strstr(err, "RIPPLE_TEST_N"), "%s", err);
    cr_assert_eq(config_str("RIPPLE_TEST_UNSET", "dflt", 1, &s, err, sizeof(err)), 0);
    cr_assert_str_eq(s, "dflt");
    cr_assert_eq(config_str("RIPPLE_TEST_UNSET", NULL, 1, &s, err, sizeof(err)), -EINVAL);
    cr_assert_not_null(strstr(err, "RIPPLE_TEST_UNSET is required"), "%s", err);
    cr_assert_eq(config_str("RIPPLE_TEST_N", NULL, 3, &s, err, sizeof(err)), -EINVAL);
}

/* DESIGN.md §11: <MODULE>_<VAR> wins over <VAR> for that module only. */
Test(config, prefixed_names_win)
{
    cr_assert_eq(setenv("PORT", "9000", 1), 0);
    cr_assert_eq(setenv("ORDERS_PORT", "9002", 1), 0);
    cr_assert_eq(setenv("CONSUMER_BATCH", "16", 1), 0);
    cr_assert_eq(setenv("ORDERS_CONSUMER_BATCH", "32", 1), 0);
    cr_assert_eq(setenv("ORDERS_DB_PATH", "/tmp/o.db", 1), 0);
    cr_assert_eq(load("orders", 8002), 0, "%s", err);
    cr_assert_eq(cfg.port, 9002);
    cr_assert_eq(cfg.consumer_batch, 32);
    cr_assert_str_eq(cfg.db_path, "/tmp/o.db");
    cr_assert_eq(load("users", 8001), 0, "%s", err);
    cr_assert_eq(cfg.port, 9000, "another module falls back to the bare name");
    cr_assert_eq(cfg.consumer_batch, 16);
    cr_assert_str_eq(cfg.db_path, "var/users.db");
}

Test(config, prefixed_error_names_the_prefixed_variable)
{
    cr_assert_eq(setenv("ORDERS_CONSUMER_BATCH", "0", 1), 0);
    cr_assert_eq(load("orders", 8002), -EINVAL);
    cr_assert_not_null(strstr(err, "ORDERS_CONSUMER_BATCH"), "%s", err);
}

Test(config, shared_settings_are_never_prefixed)
{
    cr_assert_eq(setenv("ORDERS_REDIS_URL", "redis://elsewhere:1", 1), 0);
    cr_assert_eq(load("orders", 8002), 0, "%s", err);
    cr_assert_str_eq(cfg.redis_url, "redis://127.0.0.1:6379");
}

Test(config, several_modules_refuse_bare_port_and_db_path)
{
    cr_assert_eq(config_load(&cfg, "orders", 8002, 1, err, sizeof(err)), 0, "%s", err);
    cr_assert_eq(setenv("PORT", "9000", 1), 0);
    cr_assert_eq(config_load(&cfg, "orders", 8002, 1, err, sizeof(err)), -EINVAL);
    cr_assert_not_null(strstr(err, "PORT"), "%s", err);
    cr_assert_not_null(strstr(err, "ORDERS_PORT"), "the message says what to set: %s", err);
    cr_assert_eq(unsetenv("PORT"), 0);
    cr_assert_eq(setenv("DB_PATH", "/tmp/x.db", 1), 0);
    cr_assert_eq(config_load(&cfg, "orders", 8002, 1, err, sizeof(err)), -EINVAL);
    cr_assert_not_null(strstr(err, "ORDERS_DB_PATH"), "%s", err);
}

Test(config, prefix_of_a_dashed_name)
{
    char buf[32];

    cr_assert_eq(config_prefix("email-sender", buf, sizeof(buf)), 0);
    cr_assert_str_eq(buf, "EMAIL_SENDER_");
    cr_assert_eq(setenv("EMAIL_SENDER_PORT", "9100", 1), 0);
    cr_assert_eq(load("email-sender", 8100), 0, "%s", err);
    cr_assert_eq(cfg.port, 9100);
    cr_assert_eq(config_prefix("", buf, sizeof(buf)), -EINVAL);
}
