/* config.c -- typed environment lookup. See config.h. */
#include "config.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int config_uint(const char *name, unsigned long def, unsigned long min, unsigned long max,
                unsigned long *out, char *err, size_t errlen)
{
    const char *s = getenv(name);
    char *end;
    unsigned long v;

    if (s == NULL || *s == '\0') {
        *out = def;
        return 0;
    }
    errno = 0;
    v = strtoul(s, &end, 10);
    if (*s < '0' || *s > '9' || errno != 0 || *end != '\0' || end == s || v < min || v > max) {
        snprintf(err, errlen, "config: %s=\"%.64s\" must be an integer from %lu to %lu", name, s,
                 min, max);
        return -EINVAL;
    }
    *out = v;
    return 0;
}

int config_str(const char *name, const char *def, size_t min_len, const char **out, char *err,
               size_t errlen)
{
    const char *s = getenv(name);

    if (s == NULL || *s == '\0') {
        if (def == NULL) {
            snprintf(err, errlen, "config: %s is required", name);
            return -EINVAL;
        }
        s = def;
    }
    if (strlen(s) < min_len) {
        snprintf(err, errlen, "config: %s must be at least %zu bytes", name, min_len);
        return -EINVAL;
    }
    *out = s;
    return 0;
}

struct uint_setting {
    const char *name;
    unsigned long def, min, max;
    size_t offset; /* of an unsigned field in struct config */
};

static const struct uint_setting uint_settings[] = {
    {"HTTP_MAX_HEADER_BYTES", 16384, 1024, 1048576, offsetof(struct config, http_max_header_bytes)},
    {"HTTP_MAX_HEADERS", 100, 8, 1000, offsetof(struct config, http_max_headers)},
    {"HTTP_MAX_BODY_BYTES", 1048576, 1024, 67108864, offsetof(struct config, http_max_body_bytes)},
    {"HTTP_MAX_CONNECTIONS", 4096, 1, 1000000, offsetof(struct config, http_max_connections)},
    {"HTTP_HEADER_TIMEOUT_MS", 10000, 10, 3600000, offsetof(struct config, http_header_timeout_ms)},
    {"HTTP_IDLE_TIMEOUT_MS", 60000, 10, 86400000, offsetof(struct config, http_idle_timeout_ms)},
    {"SHUTDOWN_TIMEOUT_MS", 10000, 0, 600000, offsetof(struct config, shutdown_timeout_ms)},
    {"CONSUMER_BATCH", 128, 1, CONFIG_CONSUMER_BATCH_MAX, offsetof(struct config, consumer_batch)},
    {"CONSUMER_BLOCK_MS", 2000, 10, 60000, offsetof(struct config, consumer_block_ms)},
    {"MAX_DELIVERIES", 5, 1, 1000, offsetof(struct config, max_deliveries)},
    {"MAX_DELIVERIES_GUARD", 50, 1, 100000, offsetof(struct config, max_deliveries_guard)},
    {"RECLAIM_IDLE_MS", 30000, 100, 86400000, offsetof(struct config, reclaim_idle_ms)},
    {"STREAM_MAXLEN", 1000000, 0, 4000000000UL, offsetof(struct config, stream_maxlen)},
    {"HTTP_CLIENT_TIMEOUT_MS", 2000, 10, 600000, offsetof(struct config, http_client_timeout_ms)},
    {"HTTP_CLIENT_ATTEMPTS", 3, 1, 10, offsetof(struct config, http_client_attempts)},
    {"HTTP_CLIENT_DEADLINE_MS", 5000, 10, 600000, offsetof(struct config, http_client_deadline_ms)},
    {"HTTP_CLIENT_BREAKER_FAILURES", 5, 1, 1000,
     offsetof(struct config, http_client_breaker_failures)},
    {"HTTP_CLIENT_BREAKER_COOLDOWN_MS", 5000, 10, 600000,
     offsetof(struct config, http_client_breaker_cooldown_ms)},
    {"OUTBOX_BATCH", 256, 1, 1024, offsetof(struct config, outbox_batch)},
    {"OUTBOX_MAX_BACKLOG", 10000, 1, 100000000, offsetof(struct config, outbox_max_backlog)},
    {"OUTBOX_RETENTION_MS", 3600000, 0, 4000000000UL, offsetof(struct config, outbox_retention_ms)},
    {"INBOX_RETENTION_MS", 604800000, 1000, 4000000000UL,
     offsetof(struct config, inbox_retention_ms)},
};

static int load_uints(struct config *cfg, char *err, size_t errlen)
{
    for (size_t i = 0; i < ARRAY_SIZE(uint_settings); i++) {
        const struct uint_setting *s = &uint_settings[i];
        unsigned long v;
        int rc = config_uint(s->name, s->def, s->min, s->max, &v, err, errlen);

        if (rc < 0)
            return rc;
        *(unsigned *)((char *)cfg + s->offset) = (unsigned)v;
    }
    return 0;
}

/* Settings that bound each other. */
static int check_relations(const struct config *cfg, char *err, size_t errlen)
{
    if (cfg->max_deliveries_guard < cfg->max_deliveries) {
        snprintf(err, errlen, "config: MAX_DELIVERIES_GUARD=%u must not be below MAX_DELIVERIES=%u",
                 cfg->max_deliveries_guard, cfg->max_deliveries);
        return -EINVAL;
    }
    /* an event id forgotten before its entry can be taken over and
     * redelivered would take effect twice */
    if (cfg->inbox_retention_ms < cfg->reclaim_idle_ms) {
        snprintf(err, errlen, "config: INBOX_RETENTION_MS=%u must not be below RECLAIM_IDLE_MS=%u",
                 cfg->inbox_retention_ms, cfg->reclaim_idle_ms);
        return -EINVAL;
    }
    return 0;
}

/* <host>-<service>: stable across restarts, so a restarted service re-reads
 * its own pending entries at once instead of waiting RECLAIM_IDLE_MS for the
 * group to hand them over (DESIGN.md §4 said host-pid; a service is one
 * process per database, so the pid adds nothing but a slower recovery). */
static int default_consumer_name(const char *service, char *buf, size_t len)
{
    char host[128];

    if (gethostname(host, sizeof(host)) < 0)
        snprintf(host, sizeof(host), "host");
    host[sizeof(host) - 1] = '\0';
    return snprintf(buf, len, "%s-%s", host, service) >= (int)len ? -EINVAL : 0;
}

int config_load(struct config *cfg, const char *service, unsigned default_port, char *err,
                size_t errlen)
{
    static char consumer_default[192];
    const char *db_path;
    char db_default[256];
    unsigned long port;
    int rc;

    memset(cfg, 0, sizeof(*cfg));
    cfg->service = service;
    if (snprintf(db_default, sizeof(db_default), "var/%s.db", service) >= (int)sizeof(db_default))
        return -EINVAL;
    if (default_consumer_name(service, consumer_default, sizeof(consumer_default)) < 0)
        return -EINVAL;
    if ((rc = config_uint("PORT", default_port, 1, 65535, &port, err, errlen)) < 0 ||
        (rc = config_str("HOST", "127.0.0.1", 1, &cfg->host, err, errlen)) < 0 ||
        (rc = config_str("REDIS_URL", "redis://127.0.0.1:6379", 1, &cfg->redis_url, err, errlen)) <
            0 ||
        (rc = config_str("DB_PATH", db_default, 1, &db_path, err, errlen)) < 0 ||
        (rc = config_str("JWT_SECRET", NULL, 32, &cfg->jwt_secret, err, errlen)) < 0 ||
        (rc = config_str("LOG_LEVEL", "info", 1, &cfg->log_level, err, errlen)) < 0 ||
        (rc = config_str("CONSUMER_NAME", consumer_default, 1, &cfg->consumer_name, err, errlen)) <
            0)
        return rc;
    cfg->port = (unsigned)port;
    if (snprintf(cfg->db_path, sizeof(cfg->db_path), "%s", db_path) >= (int)sizeof(cfg->db_path)) {
        snprintf(err, errlen, "config: DB_PATH is longer than %zu bytes", sizeof(cfg->db_path) - 1);
        return -EINVAL;
    }
    if (strcmp(cfg->log_level, "debug") != 0 && strcmp(cfg->log_level, "info") != 0 &&
        strcmp(cfg->log_level, "warn") != 0 && strcmp(cfg->log_level, "error") != 0) {
        snprintf(err, errlen, "config: LOG_LEVEL=\"%.32s\" must be debug, info, warn or error",
                 cfg->log_level);
        return -EINVAL;
    }
    if ((rc = load_uints(cfg, err, errlen)) < 0)
        return rc;
    return check_relations(cfg, err, errlen);
}
