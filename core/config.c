/* config.c -- typed environment lookup. See config.h. */
#include <ripple/config.h>

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* The value of <prefix><name> when it is set and not empty, else of <name>;
 * the name read goes to used (for messages). */
static const char *lookup(const char *prefix, const char *name, char used[CONFIG_NAME_MAX])
{
    const char *v;

    if (prefix != NULL && *prefix != '\0' &&
        snprintf(used, CONFIG_NAME_MAX, "%s%s", prefix, name) < CONFIG_NAME_MAX) {
        v = getenv(used);
        if (v != NULL && *v != '\0')
            return v;
    }
    snprintf(used, CONFIG_NAME_MAX, "%s", name);
    return getenv(name);
}

int config_uint_for(const char *prefix, const char *name, unsigned long def, unsigned long min,
                    unsigned long max, unsigned long *out, char *err, size_t errlen)
{
    char used[CONFIG_NAME_MAX];
    const char *s = lookup(prefix, name, used);
    char *end;
    unsigned long v;

    if (s == NULL || *s == '\0') {
        *out = def;
        return 0;
    }
    errno = 0;
    v = strtoul(s, &end, 10);
    if (*s < '0' || *s > '9' || errno != 0 || *end != '\0' || end == s || v < min || v > max) {
        snprintf(err, errlen, "config: %s=\"%.64s\" must be an integer from %lu to %lu", used, s,
                 min, max);
        return -EINVAL;
    }
    *out = v;
    return 0;
}

int config_str_for(const char *prefix, const char *name, const char *def, size_t min_len,
                   const char **out, char *err, size_t errlen)
{
    char used[CONFIG_NAME_MAX];
    const char *s = lookup(prefix, name, used);

    if (s == NULL || *s == '\0') {
        if (def == NULL) {
            snprintf(err, errlen, "config: %s is required", used);
            return -EINVAL;
        }
        s = def;
    }
    if (strlen(s) < min_len) {
        snprintf(err, errlen, "config: %s must be at least %zu bytes", used, min_len);
        return -EINVAL;
    }
    *out = s;
    return 0;
}

int config_uint(const char *name, unsigned long def, unsigned long min, unsigned long max,
                unsigned long *out, char *err, size_t errlen)
{
    return config_uint_for(NULL, name, def, min, max, out, err, errlen);
}

int config_str(const char *name, const char *def, size_t min_len, const char **out, char *err,
               size_t errlen)
{
    return config_str_for(NULL, name, def, min_len, out, err, errlen);
}

int config_prefix(const char *module, char *buf, size_t len)
{
    size_t n = strlen(module);

    if (n == 0 || n + 2 > len)
        return -EINVAL;
    for (size_t i = 0; i < n; i++)
        buf[i] = (char)(module[i] == '-' ? '_' : toupper((unsigned char)module[i]));
    buf[n] = '_';
    buf[n + 1] = '\0';
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
    {"HTTP_BODY_TIMEOUT_MS", 30000, 10, 3600000, offsetof(struct config, http_body_timeout_ms)},
    {"SHUTDOWN_TIMEOUT_MS", 10000, 0, 600000, offsetof(struct config, shutdown_timeout_ms)},
    {"CONSUMER_BATCH", 512, 1, CONFIG_CONSUMER_BATCH_MAX, offsetof(struct config, consumer_batch)},
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
    {"OUTBOX_BATCH", 1024, 1, 1024, offsetof(struct config, outbox_batch)},
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
        int rc = config_uint_for(cfg->prefix, s->name, s->def, s->min, s->max, &v, err, errlen);

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

/* In a host of several modules, settings that cannot be shared must be
 * given per module. */
static int refuse_bare(const char *name, const char *prefix, char *err, size_t errlen)
{
    const char *v = getenv(name);

    if (v == NULL || *v == '\0')
        return 0;
    snprintf(err, errlen,
             "config: %s applies to every module of this host and they cannot share it; "
             "set %s%s (and the same for each module) instead",
             name, prefix, name);
    return -EINVAL;
}

static int load_strings(struct config *cfg, char *err, size_t errlen)
{
    char db_default[256], consumer_default[192];
    const char *consumer, *db_path;
    int rc;

    if (snprintf(db_default, sizeof(db_default), "var/%s.db", cfg->service) >=
            (int)sizeof(db_default) ||
        default_consumer_name(cfg->service, consumer_default, sizeof(consumer_default)) < 0) {
        snprintf(err, errlen, "config: the module name \"%.32s\" is too long", cfg->service);
        return -EINVAL;
    }
    if ((rc = config_str_for(cfg->prefix, "HOST", "127.0.0.1", 1, &cfg->host, err, errlen)) < 0 ||
        (rc = config_str("REDIS_URL", "redis://127.0.0.1:6379", 1, &cfg->redis_url, err, errlen)) <
            0 ||
        (rc = config_str_for(cfg->prefix, "DB_PATH", db_default, 1, &db_path, err, errlen)) < 0 ||
        (rc = config_str("JWT_SECRET", NULL, 32, &cfg->jwt_secret, err, errlen)) < 0 ||
        (rc = config_str("LOG_LEVEL", "info", 1, &cfg->log_level, err, errlen)) < 0 ||
        (rc = config_str_for(cfg->prefix, "CONSUMER_NAME", consumer_default, 1, &consumer, err,
                             errlen)) < 0 ||
        (rc = config_str_for(cfg->prefix, "CONSUMER_START", "0", 1, &cfg->consumer_start, err,
                             errlen)) < 0)
        return rc;
    if (strcmp(cfg->consumer_start, "0") != 0 && strcmp(cfg->consumer_start, "$") != 0) {
        snprintf(err, errlen,
                 "config: %sCONSUMER_START=\"%.16s\" must be 0 (read the whole history) or $ "
                 "(only entries added from now on)",
                 cfg->prefix, cfg->consumer_start);
        return -EINVAL;
    }
    /* copied: db_default lives on this stack */
    if (snprintf(cfg->db_path, sizeof(cfg->db_path), "%s", db_path) >= (int)sizeof(cfg->db_path)) {
        snprintf(err, errlen, "config: %sDB_PATH is longer than %zu bytes", cfg->prefix,
                 sizeof(cfg->db_path) - 1);
        return -EINVAL;
    }
    if (snprintf(cfg->consumer_name, sizeof(cfg->consumer_name), "%s", consumer) >=
        (int)sizeof(cfg->consumer_name)) {
        snprintf(err, errlen, "config: %sCONSUMER_NAME is longer than %zu bytes", cfg->prefix,
                 sizeof(cfg->consumer_name) - 1);
        return -EINVAL;
    }
    return 0;
}

int config_load(struct config *cfg, const char *service, unsigned default_port, int shared,
                char *err, size_t errlen)
{
    unsigned long port;
    int rc;

    memset(cfg, 0, sizeof(*cfg));
    cfg->service = service;
    if (config_prefix(service, cfg->prefix, sizeof(cfg->prefix)) < 0) {
        snprintf(err, errlen, "config: the module name \"%.32s\" is too long or empty", service);
        return -EINVAL;
    }
    if (shared && ((rc = refuse_bare("PORT", cfg->prefix, err, errlen)) < 0 ||
                   (rc = refuse_bare("DB_PATH", cfg->prefix, err, errlen)) < 0))
        return rc;
    if ((rc = config_uint_for(cfg->prefix, "PORT", default_port, 1, 65535, &port, err, errlen)) <
            0 ||
        (rc = load_strings(cfg, err, errlen)) < 0)
        return rc;
    cfg->port = (unsigned)port;
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
