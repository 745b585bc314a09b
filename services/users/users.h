/* users.h -- the users service module (DESIGN.md §8): accounts, passwords, tokens.
 *
 * The module's one entry point. It serves POST /api/v1/users (register),
 * POST /api/v1/auth/token (email + password -> JWT) and GET /api/v1/users/{id}
 * on a struct service whose store is already open with schema.sql. Passwords
 * are hashed with PBKDF2-HMAC-SHA256 on the libuv thread pool, never on the
 * loop. Loop thread only. */
#ifndef SERVICES_USERS_USERS_H
#define SERVICES_USERS_USERS_H

#include "common.h"

struct service;

/* Reads PBKDF2_ITERATIONS (default 600000, 1000..10000000; a bad value stops
 * the process with one line naming it), prepares the module's statements on
 * svc->store, adds the routes and a stop hook that waits for hashes in the
 * thread pool. The module's state lives as long as svc. Returns 0, -EINVAL
 * when svc->store is not open, -ENOMEM, or -EIO when a statement does not
 * prepare (logged). */
CORE_MUST_CHECK int users_service_start(struct service *svc);

#endif
