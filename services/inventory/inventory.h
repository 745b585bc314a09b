/* inventory.h -- the inventory service module (DESIGN.md §8): products and stock.
 *
 * The module's one entry point and what its files share. It serves
 * GET /api/v1/products and GET /api/v1/products/{sku} (public reads, api.c)
 * and consumes inventory.commands (events.c): stock.reserve (all or
 * nothing), stock.release (idempotent compensation), stock.commit and
 * product.restock, replying on inventory.events through the outbox in the
 * consumer's transaction. The catalog is seeded by schema.sql's second
 * migration, so exactly once, on the first start. Loop thread only. */
#ifndef SERVICES_INVENTORY_INVENTORY_H
#define SERVICES_INVENTORY_INVENTORY_H

#include <stddef.h>

#include <ripple/common.h>
#include <ripple/module.h>
#include <ripple/streams.h>

struct service;
struct sqlite3_stmt;

/* The module (ripple/module.h): its descriptor, schema and declared types. */
MODULE_DECLARE(inventory);

/* Opens cfg.db_path and migrates it with inventory_schema_sql (seeding the catalog
 * on the first start). Prepares the module's statements, adds the public
 * product routes and attaches the inventory.commands consumer, whose release
 * frees the module's state once the service has stopped. Returns 0,
 * -ENOMEM, or -EIO when a statement does not prepare (logged). */
CORE_MUST_CHECK int inventory_service_start(struct service *svc);

/* Internal to the module (inventory.c, api.c, events.c). */

#define INVENTORY_SKU_MAX 64    /* bytes, as streams/ allows */
#define INVENTORY_NAME_MAX 100  /* bytes, after trimming, as streams/ allows */
#define INVENTORY_REASON_MAX 64 /* bytes of a snake_case reason */
#define INVENTORY_LIST_DEFAULT 20
#define INVENTORY_LIST_MAX 100

/* The module's state: one per service, freed by the consumer's release. The
 * statements are owned (and finalized) by the store. */
struct inventory {
    struct service *svc; /* borrowed: outlives the module */
    /* api.c */
    struct sqlite3_stmt *list, *get;
    /* events.c */
    struct sqlite3_stmt *res_get, *res_insert, *res_set_status, *item_insert;
    struct sqlite3_stmt *product_stock, *product_take, *product_insert, *product_restock;
    struct sqlite3_stmt *items_release, *items_commit;
};

/* 1 when s[0..len) is a sku: ^[A-Za-z0-9._-]{1,64}$. */
int inventory_sku_valid(const char *s, size_t len);

/* Prepares api.c's statements. Returns 0 or a negative errno. */
CORE_MUST_CHECK int inventory_api_prepare(struct inventory *inv);
/* Adds the public product routes, with inv as their data. */
void inventory_api_routes(struct inventory *inv);

/* Prepares events.c's statements. Returns 0 or a negative errno. */
CORE_MUST_CHECK int inventory_events_prepare(struct inventory *inv);
/* Attaches the inventory.commands consumer; it takes inv over and frees it
 * when it has closed. Exits with one line on failure (startup only). */
void inventory_events_attach(struct inventory *inv);

#endif
