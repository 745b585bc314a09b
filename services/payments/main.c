/* main.c -- the payments process (DESIGN.md §2): wiring only.
 *
 * Reads the shared configuration, starts the payments module (which checks
 * its own settings, then opens var/payments.db or DB_PATH with its
 * schema.sql) and runs the loop until SIGTERM or SIGINT. Every setting is
 * checked before the database is touched or the service listens; a bad one
 * stops it with one line naming it. */
#include "payments.h"

#include <string.h>

#include "service.h"

int main(void)
{
    struct service svc;
    int rc;

    service_init(&svc, "payments", 8004);
    rc = payments_service_start(&svc);
    if (rc < 0)
        service_fatal(&svc, "cannot start: %s", strerror(-rc));
    return service_run(&svc);
}
