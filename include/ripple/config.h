/* config.h -- typed lookup of the environment, checked once at start.
 *
 * DESIGN.md §4, §11: configuration is environment only. Every lookup has a
 * default (or is required) and a range; a bad value is an error that names
 * the variable, so the host can stop with one clear line. A setting of a
 * module is looked up as <MODULE>_<VAR> first (ORDERS_DB_PATH, USERS_PORT:
 * the module's name upper-cased, '-' as '_'), then as <VAR>; REDIS_URL,
 * JWT_SECRET and LOG_LEVEL are shared by every module and read unprefixed.
 * In a host of several modules a bare PORT or DB_PATH is refused: it cannot
 * apply to all of them. struct config holds the settings every module
 * shares; a module reads its own extras with the typed helpers
 * (config_uint_for, config_str_for). Nothing here exits: service.c does. */
#ifndef RIPPLE_CONFIG_H
#define RIPPLE_CONFIG_H

#include <stddef.h>

#include <ripple/common.h>

#define CONFIG_ERR_MAX 256
#define CONFIG_CONSUMER_BATCH_MAX 1024 /* CONSUMER_BATCH's upper bound */

#define CONFIG_NAME_MAX 64 /* bytes of a variable's name, prefix included */

struct config {
    const char *service; /* borrowed: the module's name (static storage) */
    char prefix[32];     /* "ORDERS_": the module's prefix */
    const char *host;    /* borrowed from the environment or a literal */
    unsigned port;
    const char *redis_url;
    char db_path[256];
    const char *jwt_secret; /* required, at least 32 bytes */
    const char *log_level;

    /* HTTP server limits (DESIGN.md §4) */
    unsigned http_max_header_bytes; /* request line + headers, 431 beyond */
    unsigned http_max_headers;      /* 431 beyond */
    unsigned http_max_body_bytes;   /* 413 beyond */
    unsigned http_max_connections;  /* 503 beyond */
    unsigned http_header_timeout_ms;
    unsigned http_body_timeout_ms; /* a request's body, in all: 408 beyond */
    unsigned http_idle_timeout_ms;
    unsigned shutdown_timeout_ms; /* graceful stop gives up after this */

    /* Streams */
    char consumer_name[192];
    const char *consumer_start; /* "0" (the default: all history) or "$" (only what comes next) */
    unsigned consumer_batch;
    unsigned consumer_block_ms;    /* XREADGROUP BLOCK */
    unsigned max_deliveries;       /* handler failures before the DLQ */
    unsigned max_deliveries_guard; /* Redis deliveries before the DLQ: a crash loop */
    unsigned reclaim_idle_ms;
    unsigned stream_maxlen;

    /* Outbound HTTP (core/http_client) */
    unsigned http_client_timeout_ms; /* per attempt */
    unsigned http_client_attempts;
    unsigned http_client_deadline_ms; /* overall, retries included */
    unsigned http_client_breaker_failures;
    unsigned http_client_breaker_cooldown_ms;

    /* Outbox and inbox */
    unsigned outbox_batch;        /* rows the relay has outstanding, at most */
    unsigned outbox_max_backlog;  /* HTTP writes answer 503 past this */
    unsigned outbox_retention_ms; /* published rows kept */
    unsigned inbox_retention_ms;  /* processed event ids kept for de-duplication */
};

/* Reads the settings of module service (e.g. "users", static storage)
 * whose default port is default_port; shared is 1 in a host of several
 * modules (a bare PORT or DB_PATH is then refused). Returns 0, or -EINVAL
 * with a one-line message in err naming the variable. cfg's strings are
 * borrowed from the environment. */
CORE_MUST_CHECK int config_load(struct config *cfg, const char *service, unsigned default_port,
                                int shared, char *err, size_t errlen);

/* Writes the prefix of module's settings ("ORDERS_" for "orders") into buf.
 * Returns 0, or -EINVAL when module is empty or buf too small. */
CORE_MUST_CHECK int config_prefix(const char *module, char *buf, size_t len);

/* Reads name as an unsigned integer in [min, max]; def when unset or empty.
 * Returns 0, or -EINVAL with a message in err. */
CORE_MUST_CHECK int config_uint(const char *name, unsigned long def, unsigned long min,
                                unsigned long max, unsigned long *out, char *err, size_t errlen);

/* Reads name as a string; def when unset or empty. def == NULL makes it
 * required (-EINVAL when missing). min_len is checked too. */
CORE_MUST_CHECK int config_str(const char *name, const char *def, size_t min_len, const char **out,
                               char *err, size_t errlen);

/* The same for a module's setting: <prefix><name> when it is set, else
 * <name>. prefix is a config's prefix ("" or NULL: name only). Messages name
 * the variable that was read. */
CORE_MUST_CHECK int config_uint_for(const char *prefix, const char *name, unsigned long def,
                                    unsigned long min, unsigned long max, unsigned long *out,
                                    char *err, size_t errlen);
CORE_MUST_CHECK int config_str_for(const char *prefix, const char *name, const char *def,
                                   size_t min_len, const char **out, char *err, size_t errlen);

#endif
