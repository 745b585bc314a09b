/* orders.h -- the orders service module (DESIGN.md §8): orders and their saga timeline.
 *
 * The module's one entry point is orders_service_start. It serves
 * POST /api/v1/orders (place an order for the token's user, after checking
 * over HTTP that the user exists), GET /api/v1/orders/{id} (one order with
 * its timeline) and GET /api/v1/orders (the caller's orders, newest first,
 * without timelines), and consumes orders.commands (order.place) on a
 * struct service, over the service's store migrated with schema.sql.
 *
 * The rest of this header is internal to the module (orders.c, api.c,
 * events.c, model.c, users_check.c; input.h has the input rules). State: one struct orders, shared
 * by the routes, the consumer and the user checks. It is freed once both the module's stop hook has
 * seen the last user check end and the consumer has released it. Every state change runs in one
 * store transaction with its outbox rows and its timeline steps (the order row's timeline): a step
 * records the event that moved the order on. A transition collects its steps in o->steps
 * (orders_emit, orders_step_add) and appends them with its one write of the order's row.
 * Loop thread only. */
#ifndef SERVICES_ORDERS_ORDERS_H
#define SERVICES_ORDERS_ORDERS_H

#include <stddef.h>
#include <stdint.h>

#include <ripple/clock.h>
#include <ripple/common.h>
#include <ripple/ids.h>
#include <ripple/json_out.h>
#include <ripple/service.h>
#include <ripple/streams.h>

struct json_t;
struct metrics_histogram;
struct sqlite3_stmt;
struct stream_msg;
struct stream_done;

/* The module (ripple/module.h): its descriptor, schema and declared types. */
MODULE_DECLARE(orders);

/* Reads USERS_URL (default http://127.0.0.1:8001; http:// or https://) and
 * then opens cfg.db_path and migrates it with orders_schema_sql: a bad setting
 * stops the process with one line naming it before the database is
 * touched. Prepares the module's statements, adds the routes, a stop hook
 * and the orders.commands consumer, and creates the service's HTTP client.
 * Returns 0, -ENOMEM, or -EIO when a statement does not prepare (logged). */
CORE_MUST_CHECK int orders_service_start(struct service *svc);

/* ---------------------------------------------------------------------------
 * Internal to the module
 * ------------------------------------------------------------------------- */

#define ORDERS_URL_MAX 512      /* USERS_URL, bytes */
#define ORDERS_ENTRY_MAX 64     /* a Redis stream entry id, with its NUL */
#define ORDERS_STEPS_MAX 4096   /* a transition's steps as JSON (3 at most, ~250 B each) */
#define ORDERS_ITEMS_STACK 4096 /* items' JSON text is written on the stack up to this */
/* A timeline past this many bytes records no more acknowledgements (steps
 * that neither move the order on nor send anything: a flood of them must
 * not make every write of the row ever larger). A move, and a reply that
 * sends a compensation, is recorded always. */
#define ORDERS_TIMELINE_MAX 65536

/* Order statuses (the CHECK in schema.sql lists the same). */
#define ORDERS_PENDING "PENDING"
#define ORDERS_AWAITING_PAYMENT "AWAITING_PAYMENT"
#define ORDERS_CONFIRMED "CONFIRMED"
#define ORDERS_REJECTED "REJECTED"
#define ORDERS_CANCELLED "CANCELLED"

/* Timeline step names: what the event of the step did to the order. */
#define ORDERS_STEP_REQUESTED "requested"           /* order.place received (orders.commands) */
#define ORDERS_STEP_PLACED "placed"                 /* order.placed sent */
#define ORDERS_STEP_RESERVE_STOCK "reserve_stock"   /* stock.reserve sent */
#define ORDERS_STEP_REJECTED "rejected"             /* order.rejected sent */
#define ORDERS_STEP_STOCK_RESERVED "stock_reserved" /* stock.reserved received */
#define ORDERS_STEP_STOCK_REJECTED "stock_rejected" /* stock.rejected received */
#define ORDERS_STEP_CHARGE_PAYMENT "charge_payment" /* payment.charge sent */
#define ORDERS_STEP_PAYMENT_SUCCEEDED "payment_succeeded"
#define ORDERS_STEP_PAYMENT_FAILED "payment_failed"
#define ORDERS_STEP_COMMIT_STOCK "commit_stock"     /* stock.commit sent */
#define ORDERS_STEP_CONFIRMED "confirmed"           /* order.confirmed sent */
#define ORDERS_STEP_RELEASE_STOCK "release_stock"   /* stock.release sent (compensation) */
#define ORDERS_STEP_CANCELLED "cancelled"           /* order.cancelled sent */
#define ORDERS_STEP_TIMED_OUT "timed_out"           /* order.cancelled sent, reason timeout */
#define ORDERS_STEP_REFUND_PAYMENT "refund_payment" /* payment.refund sent (compensation) */
#define ORDERS_STEP_LATE_STOCK_RESERVED "late_stock_reserved"
#define ORDERS_STEP_LATE_PAYMENT_SUCCEEDED "late_payment_succeeded"
#define ORDERS_STEP_STOCK_RELEASED "stock_released" /* acknowledgements */
#define ORDERS_STEP_STOCK_COMMITTED "stock_committed"
#define ORDERS_STEP_PAYMENT_REFUNDED "payment_refunded"

/* Reasons (DESIGN.md §5). */
#define ORDERS_REASON_UNKNOWN_USER "unknown_user"
#define ORDERS_REASON_TIMEOUT "timeout"

/* What the users service says about a user. */
enum orders_user {
    ORDERS_USER_EXISTS,      /* 200 (possibly from the cache) */
    ORDERS_USER_UNKNOWN,     /* 404 */
    ORDERS_USER_UNAVAILABLE, /* no usable answer: error, 5xx, breaker open, 401/403 */
};

/* The order.place entry waiting for its user check (one at a time: the
 * consumer holds its stream while an asynchronous handler runs). */
struct orders_pending_place {
    struct stream_done *done;       /* the consumer's token, while checking */
    struct json_t *items;           /* new: the canonical items */
    char user_id[IDS_UUID_LEN + 1]; /* lower case */
    enum orders_user answer;        /* set before the handler is resumed */
    int checking;                   /* a check is in flight */
};

struct orders {
    struct service *svc;            /* borrowed: outlives the module */
    char users_url[ORDERS_URL_MAX]; /* USERS_URL without trailing slashes */
    /* Prepared statements, owned (finalized) by the store. */
    struct sqlite3_stmt *insert, *by_id, *list_all, *list_user, *by_key, *timeline_fill;
    /* The steps of the transition being written, the timeline's next
     * elements as JSON text ("{...},{...}"): its write of the row appends them. */
    struct json_out steps;
    char steps_buf[ORDERS_STEPS_MAX];
    unsigned steps_sent; /* of those, events the transition sent (orders_emit) */
    struct orders_pending_place place;
    unsigned checks;                /* user checks in flight (HTTP and stream) */
    unsigned refs;                  /* the stop hook's and the consumer's */
    int stopping;                   /* the stop hook ran: start no new checks */
    service_stop_done_cb stop_done; /* set by the stop hook until checks == 0 */

    /* saga.c */
    unsigned long saga_timeout_ms; /* SAGA_TIMEOUT_MS */
    uv_timer_t saga_timer;         /* the deadline sweep */
    service_stop_done_cb saga_stop_done;
    struct sqlite3_stmt *saga_load, *saga_update, *saga_append, *saga_due;
    struct metrics_histogram *saga_seconds[3]; /* orders_saga_seconds: confirmed, rejected,
                                                  cancelled; NULL on ENOMEM (not observed) */
};

/* Drops one of o's two references (the stop hook's, the consumer's); the
 * last frees o. Takes void * to serve as the consumer's release callback. */
void orders_unref(void *o);
/* Called when a user check ends: once stopping and no check is left, tells
 * the service the module is done (and drops the stop hook's reference). */
void orders_maybe_stopped(struct orders *o);

/* api.c: adds the HTTP routes. */
void orders_api_start(struct orders *o);
/* events.c: starts consuming orders.commands (the consumer's release drops
 * a reference to o). */
void orders_events_start(struct orders *o);

/* saga.c: reads SAGA_TIMEOUT_MS (default 30000), starts the deadline sweep
 * and consumes inventory.events and payments.events. Returns 0 or a
 * negative errno. */
CORE_MUST_CHECK int orders_saga_start(struct orders *o);
/* The deadline of an order whose step starts now: ms since the epoch. */
int64_t orders_saga_deadline(const struct orders *o);

/* users_check.c */

/* Called once per check, on the loop; why (borrowed for the call) says what
 * went wrong when the answer is ORDERS_USER_UNAVAILABLE, else "". */
typedef void (*orders_user_cb)(struct orders *o, enum orders_user answer, const char *why,
                               void *data);
/* Asks users whether user_id (a lower-case UUID) exists: GET
 * {USERS_URL}/api/v1/users/{id} with a service token, cached (positive
 * answers 60 s, 404s 5 s, stale positives served up to 10 min when users
 * fails). Returns 0, after which cb fires exactly once on a later loop turn;
 * or a negative errno (-ECANCELED while stopping, -ENOMEM, -ENAMETOOLONG)
 * and cb never fires. */
CORE_MUST_CHECK int orders_user_check(struct orders *o, const char *user_id, orders_user_cb cb,
                                      void *data);

/* model.c: the database. Functions that write must be called inside an
 * open store transaction; they return 0 or a negative errno (-EIO logged,
 * -ENOMEM). */

/* Prepares the module's statements. Returns 0 or -EIO (logged). */
CORE_MUST_CHECK int orders_model_prepare(struct orders *o);

/* A new order. reason NULL places it: PENDING, with order.placed
 * (orders.events) and stock.reserve (inventory.commands) in the outbox and
 * the steps "placed" and "reserve_stock". A reason (e.g. "unknown_user")
 * records it REJECTED at once, with order.rejected and the step "rejected".
 * cmd, when not NULL, is the order.place entry the order comes from,
 * recorded first as the step "requested" (with its entry id). */
struct orders_new {
    const char *user_id;          /* lower-case UUID */
    struct json_t *items;         /* borrowed: canonical [{sku, qty}] */
    const char *reason;           /* NULL, or a snake_case reason */
    const struct stream_msg *cmd; /* borrowed, may be NULL */
    const char *idempotency_key;  /* the client's Idempotency-Key, or NULL */
};
/* Creates the order (inside the caller's transaction); its id (a new UUID)
 * goes to id and, when out is not NULL, the order as GET shows it is
 * written into out as JSON text (from what was written: no read-back; see
 * out->overflow). Returns 0, -EEXIST when the user already has an order
 * with n->idempotency_key (nothing written: roll back), or -EIO / -ENOMEM. */
CORE_MUST_CHECK int orders_create(struct orders *o, const struct orders_new *n,
                                  char id[IDS_UUID_LEN + 1], struct json_out *out);

/* What orders emits (catalog.c), indexed by these. */
enum orders_out {
    ORDERS_OUT_PLACED,
    ORDERS_OUT_CONFIRMED,
    ORDERS_OUT_REJECTED,
    ORDERS_OUT_CANCELLED,
    ORDERS_OUT_RESERVE,
    ORDERS_OUT_RELEASE,
    ORDERS_OUT_COMMIT,
    ORDERS_OUT_CHARGE,
    ORDERS_OUT_REFUND,
};

/* The handlers of what orders consumes (events.c: order.place; saga.c: the
 * replies of inventory and payments). */
int orders_on_place(struct stream_msg *msg, void *data);
int orders_on_stock_reserved(struct stream_msg *msg, void *data);
int orders_on_stock_rejected(struct stream_msg *msg, void *data);
int orders_on_stock_released(struct stream_msg *msg, void *data);
int orders_on_stock_committed(struct stream_msg *msg, void *data);
int orders_on_payment_succeeded(struct stream_msg *msg, void *data);
int orders_on_payment_failed(struct stream_msg *msg, void *data);
int orders_on_payment_refunded(struct stream_msg *msg, void *data);

/* Starts a transition: o->steps empty. */
void orders_steps_reset(struct orders *o);
/* Before the transition writes o->steps: 0, or -EOVERFLOW (logged) when
 * they did not fit ORDERS_STEPS_MAX. */
CORE_MUST_CHECK int orders_steps_check(const struct orders *o, const char *order_id);
/* Appends data (stolen; NULL is -ENOMEM) as the event out of orders_emits
 * to the outbox, with the order id as its trace, and adds it to o->steps.
 * at is the transition's time (ISO-8601). */
CORE_MUST_CHECK int orders_emit(struct orders *o, const char *order_id, enum orders_out out,
                                struct json_t *data, const char *step, const char *at);
/* Adds a timeline step to o->steps: an event the order received (with its
 * stream entry id) or sent (entry_id NULL: looked up in the outbox once
 * published). */
void orders_step_add(struct orders *o, const char *step, const char *event_type,
                     const char *event_id, const char *stream, const char *entry_id,
                     const char *at);

/* The order user_id placed with Idempotency-Key key: its id, and in
 * *items its canonical items JSON text (malloc'ed). Returns 0, -ENOENT,
 * -EIO or -ENOMEM. */
CORE_MUST_CHECK int orders_find_by_key(struct orders *o, const char *user_id, const char *key,
                                       char id[IDS_UUID_LEN + 1], char **items);

/* Loads order id as its JSON resource with its timeline (DESIGN.md §4).
 * owner, when not NULL, must be its user_id, or the order is not found.
 * Entry ids of published events are looked up in the outbox and stored back.
 * Returns 0 and *out (new), -ENOENT, -EIO or -ENOMEM. Outside transactions. */
CORE_MUST_CHECK int orders_get(struct orders *o, const char *id, const char *owner,
                               struct json_t **out);
/* Lists orders, newest first: those of user_id (NULL: everyone's) with seq
 * below before, at most limit of them, without their timelines. *items is a
 * new array; *next the seq to continue below, or 0 when this is the last
 * page. Returns 0, -EIO or -ENOMEM. */
CORE_MUST_CHECK int orders_list(struct orders *o, const char *user_id, int64_t before,
                                unsigned limit, struct json_t **items, int64_t *next);

#endif
