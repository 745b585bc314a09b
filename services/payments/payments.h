/* payments.h -- the payments service module (DESIGN.md §8): accounts and charges.
 *
 * The module's one entry point is payments_service_start. It opens an
 * account with an initial credit for every user.registered (users.events),
 * takes charges, refunds and credits from payments.commands, and serves
 * GET /api/v1/accounts/{user_id} and GET /api/v1/payments/{order_id}, on a
 * struct service over the service's store migrated with schema.sql.
 *
 * The rest of this header is internal to the module (payments.c, model.c,
 * events.c, api.c). State: one struct payments, shared by the routes and
 * the two consumers. It has one reference per consumer, dropped by the
 * consumer's release callback once it can no longer call a handler; the
 * last frees it. The HTTP handlers answer at once (nothing deferred), and
 * the service dispatches no request once its stop has begun, so they need
 * no reference of their own. Every change of money runs inside the
 * consumer's transaction with its outbox row. Ids are stored and emitted in
 * lower case. Loop thread only. */
#ifndef SERVICES_PAYMENTS_PAYMENTS_H
#define SERVICES_PAYMENTS_PAYMENTS_H

#include <stddef.h>
#include <stdint.h>

#include <ripple/clock.h>
#include <ripple/common.h>
#include <ripple/module.h>
#include <ripple/ids.h>
#include <ripple/streams.h>

struct service;
struct sqlite3_stmt;

/* The module (ripple/module.h): its descriptor, schema and declared types. */
MODULE_DECLARE(payments);

/* Reads INITIAL_CREDIT_CENTS (default 10000, 0..10^12) and then opens
 * cfg.db_path and migrates it with payments_schema_sql: a bad setting stops
 * the process with one line naming it before the database is touched.
 * Prepares the module's statements, adds the routes and the consumers of
 * users.events and payments.commands. Returns 0, -ENOMEM, or -EIO when a
 * statement does not prepare (logged). */
CORE_MUST_CHECK int payments_service_start(struct service *svc);

/* ---------------------------------------------------------------------------
 * Internal to the module
 * ------------------------------------------------------------------------- */

/* No running total passes this, so that the sums in the accounts CHECK
 * (two totals at a time) never overflow SQLite's 64-bit integers. */
#define PAYMENTS_MAX_TOTAL (INT64_MAX / 4)

/* Reasons (DESIGN.md §5) a charge fails with. */
#define PAYMENTS_REASON_NO_ACCOUNT "no_account"
#define PAYMENTS_REASON_INSUFFICIENT "insufficient_funds"
#define PAYMENTS_REASON_REFUNDED "refunded"           /* a charge again after its refund */
#define PAYMENTS_REASON_ACCOUNT_LIMIT "account_limit" /* a total would pass PAYMENTS_MAX_TOTAL */

/* A payment's status; the CHECK in schema.sql lists the same words. */
enum payments_status {
    PAYMENTS_SUCCEEDED,
    PAYMENTS_FAILED,
    PAYMENTS_REFUNDED,
};

struct payments {
    struct service *svc;   /* borrowed: outlives the module */
    int64_t initial_cents; /* INITIAL_CREDIT_CENTS */
    unsigned refs;         /* the consumers' */
    /* Prepared statements, owned (finalized) by the store. */
    struct sqlite3_stmt *acct_get, *acct_open, *acct_put;
    struct sqlite3_stmt *pay_get, *pay_insert, *pay_status;
};

/* An account row. */
struct payments_account {
    int64_t balance, initial, credited, charged, refunded; /* cents */
    char updated_at[CLOCK_ISO8601_LEN + 1];
};

/* A payment row. */
struct payments_payment {
    char user_id[IDS_UUID_LEN + 1];
    int64_t amount; /* cents */
    enum payments_status status;
    char reason[STREAMS_MAX_REASON + 1]; /* "" unless failed */
    char created_at[CLOCK_ISO8601_LEN + 1];
};

/* payments.c */

/* Drops one of p's references (one per consumer); the last frees p. Takes
 * void * to serve as the consumers' release callback. */
void payments_unref(void *p);
/* "succeeded", "failed" or "refunded". */
const char *payments_status_name(enum payments_status s);

/* model.c: the database. Writers must be called inside an open store
 * transaction. All return 0 or a negative errno: -ENOENT (no such row),
 * -EIO (SQLite, logged). at is an ISO-8601 time from clock_iso8601. */

/* Prepares the module's statements. Returns 0 or -EIO (logged). */
CORE_MUST_CHECK int payments_model_prepare(struct payments *p);
CORE_MUST_CHECK int payments_account_get(struct payments *p, const char *user_id,
                                         struct payments_account *out);
/* Opens user_id's account with initial cents, unless it exists. Returns 1
 * (opened), 0 (it existed: left alone) or -EIO. */
CORE_MUST_CHECK int payments_account_open(struct payments *p, const char *user_id, int64_t initial,
                                          const char *at);
/* Writes a's balance and totals (not initial) to user_id's account. */
CORE_MUST_CHECK int payments_account_put(struct payments *p, const char *user_id,
                                         const struct payments_account *a, const char *at);
CORE_MUST_CHECK int payments_payment_get(struct payments *p, const char *order_id,
                                         struct payments_payment *out);
/* Records the charge of order_id; pm->reason is stored only when failed. */
CORE_MUST_CHECK int payments_payment_insert(struct payments *p, const char *order_id,
                                            const struct payments_payment *pm, const char *at);
CORE_MUST_CHECK int payments_payment_set_status(struct payments *p, const char *order_id,
                                                enum payments_status s, const char *at);

/* events.c: attaches the consumers of users.events and payments.commands;
 * each one's release drops a reference to p. */
void payments_events_start(struct payments *p);

/* api.c: adds the HTTP routes. */
void payments_api_start(struct payments *p);

#endif
