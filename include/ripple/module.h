/* module.h -- a service's code behind one descriptor (DESIGN.md §11).
 *
 * A module is what services/<name>/ exports: one const struct module that a
 * host (core/host.h) walks. The host never knows a module's internals: it
 * reads the module's settings into a struct service of its own (its port,
 * database, consumer group, outbox, metrics, service identity), calls start,
 * and later stops it. Two modules in one process share the loop and nothing
 * else: a module never calls another module's functions or opens another
 * module's database. Header only. */
#ifndef RIPPLE_MODULE_H
#define RIPPLE_MODULE_H

struct service;
struct stream_type;

/* Raised when struct module or the API a module is compiled against changes
 * incompatibly: a module built for another runtime is refused with a clear
 * line instead of crashing. */
#define MODULE_ABI 2

struct module {
    unsigned abi;          /* MODULE_ABI, as the module was compiled */
    const char *name;      /* [a-z][a-z0-9-]*: consumer group, log `service`, setting prefix */
    unsigned default_port; /* PORT (<NAME>_PORT) overrides it */
    const char *schema;    /* schema.sql text for service_open_store; NULL: no database */
    /* The open catalog (DESIGN.md §12, ripple/streams.h): the types this
     * module appends to its outbox, and the types it consumes, each with its
     * handler. Lists end with an entry whose stream is NULL; NULL for none.
     * outbox_append refuses a type not in emits; service_consume attaches a
     * consumer per stream of consumes. */
    const struct stream_type *emits;
    const struct stream_type *consumes;
    /* Reads the module's own settings (service_setting_*), opens its store,
     * adds its routes and consumers. Runs before any module listens; may stop
     * the process with one line (service_fatal), and returns 0 or a negative
     * errno (the host stops with one line naming the module). */
    int (*start)(struct service *svc);
};

#endif
