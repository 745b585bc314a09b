/* orders.c -- the orders module's start and stop. See orders.h.
 *
 * Checks USERS_URL before the database is touched, opens the store, then
 * wires the routes (api.c), the consumer of orders.commands (events.c) and
 * the service's HTTP client (for the user checks). The one struct orders is
 * shared by all of them, so it has two references: the stop hook's, dropped
 * once the last user check in flight has answered (the HTTP client cancels
 * them when it closes), and the consumer's, dropped by its release callback
 * once it can no longer call a handler. HTTP handlers are not called after
 * the stop starts except for requests already in hand, whose user checks
 * the stop hook waits for. */
#include "orders.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include <ripple/config.h>
#include <ripple/log.h>
#include <ripple/service.h>

#define USERS_URL_DEFAULT "http://127.0.0.1:8001"

/* Checks url (http:// or https://, a host, no white space, query or
 * fragment) and copies it into out without trailing slashes. Returns 0 or
 * -EINVAL. */
static int users_url_check(const char *url, char out[ORDERS_URL_MAX])
{
    size_t len = strlen(url), scheme;

    if (strncmp(url, "http://", 7) == 0)
        scheme = 7;
    else if (strncmp(url, "https://", 8) == 0)
        scheme = 8;
    else
        return -EINVAL;
    while (len > scheme && url[len - 1] == '/')
        len--;
    if (len == scheme || len >= ORDERS_URL_MAX || url[scheme] == '/')
        return -EINVAL;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)url[i];

        if (c <= ' ' || c == 0x7f || c == '?' || c == '#')
            return -EINVAL;
    }
    memcpy(out, url, len);
    out[len] = '\0';
    return 0;
}

void orders_unref(void *data)
{
    struct orders *o = data;

    if (--o->refs > 0)
        return;
    json_decref(o->place.items);
    free(o);
}

void orders_maybe_stopped(struct orders *o)
{
    service_stop_done_cb done = o->stop_done;
    struct service *svc = o->svc;

    if (done == NULL || o->checks > 0)
        return;
    o->stop_done = NULL;
    orders_unref(o);
    done(svc);
}

/* New checks are refused from now on; the ones in flight end soon (the HTTP
 * client cancels them when it closes). */
static void on_stop(struct service *svc, void *data, service_stop_done_cb done)
{
    struct orders *o = data;

    (void)svc;
    o->stopping = 1;
    o->stop_done = done;
    orders_maybe_stopped(o);
}

int orders_service_start(struct service *svc)
{
    /* Checked before the database is touched: a bad setting is one line. */
    const char *raw = service_setting_str(svc, "USERS_URL", USERS_URL_DEFAULT, 1);
    unsigned long saga_timeout = service_setting_uint(svc, "SAGA_TIMEOUT_MS", 30000, 10, 86400000);
    char url[ORDERS_URL_MAX];
    struct orders *o;
    int rc;

    if (users_url_check(raw, url) < 0)
        service_fatal(svc,
                      "config: %sUSERS_URL (or USERS_URL) must be an http:// or https:// URL "
                      "with a host, without query or spaces, shorter than %d bytes",
                      svc->cfg.prefix, ORDERS_URL_MAX);
    service_open_store(svc);
    o = calloc(1, sizeof(*o));
    if (o == NULL)
        return -ENOMEM;
    o->svc = svc;
    memcpy(o->users_url, url, sizeof(url));
    o->saga_timeout_ms = saga_timeout;
    rc = orders_model_prepare(o);
    if (rc < 0) {
        free(o);
        return rc;
    }
    o->refs = 2;
    /* Before the client's own hook: no check starts once the stop began. */
    service_on_stop(svc, on_stop, o);
    service_http_client(svc);
    orders_api_start(o);
    orders_events_start(o);
    rc = orders_saga_start(o);
    if (rc < 0)
        return rc;
    if (strchr(o->users_url, '@') == NULL) /* never log credentials */
        log_info("orders: checking users at %s", o->users_url);
    return 0;
}

MODULE_DEFINE(orders, 8002, orders_schema_sql, orders_emits, orders_consumes, orders_service_start);
