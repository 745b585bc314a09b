/* main.c -- the users process (DESIGN.md §2): wiring only.
 *
 * Reads the configuration, opens var/users.db (or DB_PATH) with schema.sql,
 * which the Makefile embeds as users_schema_sql, starts the users module and
 * runs the loop until SIGTERM or SIGINT. Every setting is checked before the
 * service listens; a bad one stops it with one line naming it. */
#include "users.h"

#include <string.h>

#include "service.h"

extern const char users_schema_sql[];

int main(void)
{
    struct service svc;
    int rc;

    service_init(&svc, "users", 8001);
    service_open_store(&svc, users_schema_sql);
    rc = users_service_start(&svc);
    if (rc < 0)
        service_fatal("cannot start: %s", strerror(-rc));
    return service_run(&svc);
}
