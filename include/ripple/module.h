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

/* What a module's header declares for the host and for its own files: the
 * descriptor, its schema.sql text (embedded by ripple-embed-sql) and its
 * lists of emitted and consumed types. */
#define MODULE_DECLARE(id)                                                                         \
    extern const struct module id##_module;                                                        \
    extern const char id##_schema_sql[];                                                           \
    extern const struct stream_type id##_emits[];                                                  \
    extern const struct stream_type id##_consumes[]

/* The descriptor of a module in one statement: defines `<id>_module`.
 *   MODULE_DEFINE(orders, 8002, orders_schema_sql, orders_emits, orders_consumes,
 *                 orders_service_start);
 * The module's name is id's text with '_' written '-' where it has one
 * (pass the name string with MODULE_DEFINE_NAMED for that). */
#define MODULE_DEFINE_NAMED(id, name_, port, schema_, emits_, consumes_, start_)                   \
    const struct module id##_module = {.abi = MODULE_ABI,                                          \
                                       .name = (name_),                                            \
                                       .default_port = (port),                                     \
                                       .schema = (schema_),                                        \
                                       .emits = (emits_),                                          \
                                       .consumes = (consumes_),                                    \
                                       .start = (start_)}
#define MODULE_DEFINE(id, port, schema_, emits_, consumes_, start_)                                \
    MODULE_DEFINE_NAMED(id, #id, port, schema_, emits_, consumes_, start_)

#endif
