/* main.c -- the inventory process (DESIGN.md §2): wiring only.
 *
 * Reads the shared configuration, starts the inventory module (which opens
 * var/inventory.db or DB_PATH with its schema.sql, seeding the catalog on the
 * first start) and runs the loop until SIGTERM or SIGINT. A bad setting stops
 * it with one line naming it before the database is touched. */
#include "inventory.h"

#include <string.h>

#include "service.h"

int main(void)
{
    struct service svc;
    int rc;

    service_init(&svc, "inventory", 8003);
    rc = inventory_service_start(&svc);
    if (rc < 0)
        service_fatal(&svc, "cannot start: %s", strerror(-rc));
    return service_run(&svc);
}
