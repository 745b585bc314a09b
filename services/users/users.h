/* users.h -- the users service module (DESIGN.md §8): accounts, passwords, tokens.
 *
 * The module's one entry point. It serves POST /api/v1/users (register),
 * POST /api/v1/auth/token (email + password -> JWT) and GET /api/v1/users/{id}
 * on a struct service, over the service's store migrated with schema.sql.
 * Passwords are hashed with PBKDF2-HMAC-SHA256 on the libuv thread pool,
 * never on the loop. Loop thread only. */
#ifndef SERVICES_USERS_USERS_H
#define SERVICES_USERS_USERS_H

#include <stddef.h>

#include <ripple/common.h>
#include <ripple/module.h>
#include <ripple/streams.h>

struct service;

/* The module (ripple/module.h): its descriptor, schema and declared types. */
MODULE_DECLARE(users);

/* Reads PBKDF2_ITERATIONS (default 600000, 1000..10000000) and then opens
 * cfg.db_path and migrates it with users_schema_sql: a bad setting stops the
 * process with one line naming it before the database is touched. Prepares
 * the module's statements, adds the routes and a stop hook that waits for
 * the hashes in the thread pool (their requests are answered), then frees the
 * module's state. Returns 0, -ENOMEM, or -EIO when a statement does not
 * prepare (logged). */
CORE_MUST_CHECK int users_service_start(struct service *svc);

/* Internal to the module (api.c, events.c). */

/* Appends user.registered for a user created in the open transaction; trace
 * NULL means the user id. Returns 0 or a negative errno. */
CORE_MUST_CHECK int users_emit_registered(struct service *svc, const char *id, const char *name,
                                          const char *email, const char *trace);
/* Starts consuming users.commands (user.register). Returns 0 or a negative
 * errno. */
CORE_MUST_CHECK int users_events_start(struct service *svc);

#endif
