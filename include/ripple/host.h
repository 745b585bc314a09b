/* host.h -- one process, one loop, any set of modules (DESIGN.md §11).
 *
 * A host runs the modules it is asked for in one libuv loop of its own
 * (with RIPPLE_THREADS=1 and several modules: a loop and a thread for each,
 * all set up and listening before the threads start; a module never sees
 * the difference, its code runs on its one loop either way):
 * `ripple users orders` (or `ripple all`, or RIPPLE_SERVICES=users,orders),
 * and a binary named after a module (build/users) is a host of that module
 * alone. Each module gets a struct service (core/service.h) with its own
 * settings, database, port, consumers and outbox; the host owns the loop,
 * the signals and the process.
 *
 * Start is all or nothing: every module's settings are read and checked,
 * then every module starts (opens its database, adds its routes), then
 * every module listens. A failure anywhere stops the process with one line
 * naming the module (exit status 1); after start nothing exits. SIGTERM or
 * SIGINT stops every module gracefully (each finishes the work in hand and
 * flushes its outbox); the host returns 0 once all have stopped and the loop
 * has closed. */
#ifndef RIPPLE_HOST_H
#define RIPPLE_HOST_H

#include <stddef.h>

#include <ripple/module.h>

#define HOST_MAX_MODULES 32

/* The whole life of a host: parses argv (module names, or `all`) or
 * RIPPLE_SERVICES, picks from modules[0..n) (borrowed; a single module is
 * hosted when argv names none and the binary is named after it or it is the
 * only one), runs them until a signal, and returns the exit status. Exits
 * with status 1 and one line on a bad selection or a failed start; prints
 * usage and returns 2 for `--help`. */
int host_main(int argc, char **argv, const struct module *const *modules, size_t n);

#endif
