/* config.h -- typed lookup of the environment, checked once at start.
 *
 * DESIGN.md §4: configuration is environment only. Every lookup has a default
 * (or is required) and a range; a bad value is an error that names the
 * variable, so the service can stop with one clear line. struct config holds
 * the settings every service shares; a service reads its own extras with the
 * typed helpers (config_uint, config_str). Nothing here exits: service.c does. */
#ifndef CORE_CONFIG_H
#define CORE_CONFIG_H

#include <stddef.h>

#include "common.h"

#define CONFIG_ERR_MAX 256
#define CONFIG_CONSUMER_BATCH_MAX 1024 /* CONSUMER_BATCH's upper bound */

struct config {
    const char *service; /* borrowed: a string literal from main */
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
    unsigned http_idle_timeout_ms;
    unsigned shutdown_timeout_ms; /* graceful stop gives up after this */

    /* Streams (used from the streams issue on; read and checked now). */
    const char *consumer_name;
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
    unsigned outbox_batch;        /* rows per relay pass */
    unsigned outbox_max_backlog;  /* HTTP writes answer 503 past this */
    unsigned outbox_retention_ms; /* published rows kept */
    unsigned inbox_retention_ms;  /* processed event ids kept for de-duplication */
};

/* Reads the shared settings for service (e.g. "users") whose default port is
 * default_port. Returns 0, or -EINVAL with a one-line message in err naming
 * the variable. cfg's strings are borrowed from the environment. */
CORE_MUST_CHECK int config_load(struct config *cfg, const char *service, unsigned default_port,
                                char *err, size_t errlen);

/* Reads name as an unsigned integer in [min, max]; def when unset or empty.
 * Returns 0, or -EINVAL with a message in err. */
CORE_MUST_CHECK int config_uint(const char *name, unsigned long def, unsigned long min,
                                unsigned long max, unsigned long *out, char *err, size_t errlen);

/* Reads name as a string; def when unset or empty. def == NULL makes it
 * required (-EINVAL when missing). min_len is checked too. */
CORE_MUST_CHECK int config_str(const char *name, const char *def, size_t min_len, const char **out,
                               char *err, size_t errlen);

#endif
