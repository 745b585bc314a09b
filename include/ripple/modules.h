/* modules.h -- the reference modules of ripple (services/), installed as
 * libripple-modules.a (pkg-config ripple-modules).
 *
 * A host composes any of them with modules of its own: list their names to
 * ripple-gen-host, or hand their descriptors to host_main (ripple/host.h).
 * Each keeps everything it has alone (its database, port, consumer group,
 * outbox; DESIGN.md §11). The descriptors are the archive's only global
 * symbols: a module's internals never clash with another's names. */
#ifndef RIPPLE_MODULES_H
#define RIPPLE_MODULES_H

#include <ripple/module.h>

extern const struct module users_module;     /* port 8001: accounts of people, tokens */
extern const struct module orders_module;    /* port 8002: orders and their saga */
extern const struct module inventory_module; /* port 8003: products and stock */
extern const struct module payments_module;  /* port 8004: accounts of money, charges */
extern const struct module console_module;   /* port 8000: the operator's view */

#endif
