/* main.c -- the orders process (DESIGN.md §2): wiring only.
 *
 * Reads the shared configuration, starts the orders module (which checks
 * its own settings, then opens var/orders.db or DB_PATH with its
 * schema.sql) and runs the loop until SIGTERM or SIGINT. Every setting is
 * checked before the database is touched or the service listens; a bad one
 * stops it with one line naming it. */
#include "orders.h"

#include <string.h>

#include "service.h"

int main(void)
{
    struct service svc;
    int rc;

    service_init(&svc, "orders", 8002);
    rc = orders_service_start(&svc);
    if (rc < 0)
        service_fatal(&svc, "cannot start: %s", strerror(-rc));
    return service_run(&svc);
}
