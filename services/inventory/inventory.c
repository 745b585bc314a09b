/* inventory.c -- the inventory module's entry point. See inventory.h.
 *
 * Opens the store (the schema's second migration seeds the catalog, so the
 * seed runs exactly once), allocates struct inventory, prepares every
 * statement before anything is wired (a failure leaves no route or consumer
 * pointing at freed state), then adds the routes and attaches the consumer.
 * From then on the consumer owns the state: its release frees it after the
 * service has stopped dispatching requests and closed the consumer. */
#include "inventory.h"

#include <errno.h>
#include <stdlib.h>

#include <ripple/service.h>

int inventory_sku_valid(const char *s, size_t len)
{
    if (len == 0 || len > INVENTORY_SKU_MAX)
        return 0;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        int ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
                 c == '.' || c == '_' || c == '-';

        if (!ok)
            return 0;
    }
    return 1;
}

int inventory_service_start(struct service *svc)
{
    struct inventory *inv;
    int rc;

    service_open_store(svc);
    inv = calloc(1, sizeof(*inv));
    if (inv == NULL)
        return -ENOMEM;
    inv->svc = svc;
    rc = inventory_api_prepare(inv);
    if (rc == 0)
        rc = inventory_events_prepare(inv);
    if (rc < 0) {
        free(inv);
        return rc;
    }
    inventory_api_routes(inv);
    inventory_events_attach(inv);
    return 0;
}

MODULE_DEFINE(inventory, 8003, inventory_schema_sql, inventory_emits, inventory_consumes,
              inventory_service_start);
