/* events.c -- the payments service's stream side (DESIGN.md §5, §6, §8).
 *
 * Every handler runs inside the consumer's transaction, under the entry's
 * savepoint, with a payload the catalog has already checked: its writes and
 * the outbox row of the event it emits commit together with the inbox row,
 * and an error rolls all of them back. Emitted events go to payments.events
 * with the entry's trace, or, when it has none, the order id (charges,
 * refunds) or the user id (accounts). Ids are stored and emitted in lower
 * case. One log line per outcome, with the trace.
 *
 * users.events:
 *   user.registered  opens the user's account with INITIAL_CREDIT_CENTS and
 *                    emits account.opened {user_id, balance_cents}; an
 *                    account that exists is left alone, and nothing is
 *                    emitted (no one waits for an answer to an event).
 *   other types      skipped (acked).
 *
 * payments.commands:
 *   payment.charge   A CHARGE FOR AN ORDER IS TAKEN AT MOST ONCE. The
 *                    payments row of the order is the record of the
 *                    decision; while it exists, a charge again (redelivered,
 *                    re-sent, replayed from the DLQ) changes nothing and
 *                    answers the recorded outcome:
 *                      succeeded -> payment.succeeded
 *                      failed    -> payment.failed with the recorded reason
 *                      refunded  -> payment.failed, reason "refunded": the
 *                                   money is back, so "succeeded" would be
 *                                   false -- a saga still waiting for this
 *                                   payment would confirm an order nobody
 *                                   paid for; "failed" makes it cancel and
 *                                   release the stock, and a finished saga
 *                                   has nothing to compensate.
 *                    The answer carries the recorded user and amount; a
 *                    command that differs is logged (warn). Else: no
 *                    account -> failed "no_account"; balance < amount ->
 *                    failed "insufficient_funds" (both recorded, nothing
 *                    moves); else the amount is debited (balance -= amount,
 *                    charged += amount), recorded succeeded, and
 *                    payment.succeeded is emitted.
 *   payment.refund   succeeded -> balance += amount, refunded += amount,
 *                    status refunded, payment.refunded; already refunded ->
 *                    payment.refunded again, nothing moves; failed -> no
 *                    money moved, so nothing to give back: acked, no event
 *                    (a compensation racing a failed charge is legitimate,
 *                    and payment.refunded would claim a refund that never
 *                    happened); no payment row -> refused "no_payment"
 *                    (dead letter: there is no charge to undo).
 *   account.credit   balance += amount, credited += amount,
 *                    account.credited {user_id, amount_cents,
 *                    balance_cents}; no account -> refused "no_account"; a
 *                    balance past the catalog's largest amount -> refused
 *                    "balance_limit".
 *
 * The running totals never pass PAYMENTS_MAX_TOTAL (a charge that would is
 * failed "account_limit"), so the schema's invariant CHECK never overflows. */
#include "payments.h"

#include <errno.h>
#include <string.h>

#include <jansson.h>

#include <ripple/clock.h>
#include <ripple/log.h>
#include <ripple/outbox.h>
#include <ripple/service.h>
#include <ripple/stream_consumer.h>
#include <ripple/streams.h>

/* A payment.charge in hand. */
struct charge {
    char order_id[IDS_UUID_LEN + 1];
    struct payments_payment pm; /* user_id, amount; then the decision */
    const char *trace;          /* borrowed: the entry's, or order_id */
    char at[CLOCK_ISO8601_LEN + 1];
};

/* ---------------------------------------------------------------------------
 * Emitting
 * ------------------------------------------------------------------------- */

/* What payments emits (DESIGN.md §12), in the order of enum pay_out. */
enum pay_out { OUT_OPENED, OUT_CREDITED, OUT_SUCCEEDED, OUT_REFUNDED, OUT_FAILED };

static const struct spec_field opened_fields[] = {
    SPEC_UUID("user_id"), SPEC_INT("balance_cents", 0, STREAMS_MAX_INTEGER), SPEC_END};
static const struct spec_field credited_fields[] = {
    SPEC_UUID("user_id"), SPEC_POSITIVE("amount_cents", STREAMS_MAX_INTEGER),
    SPEC_INT("balance_cents", 0, STREAMS_MAX_INTEGER), SPEC_END};
static const struct spec_field paid_fields[] = {SPEC_UUID("order_id"), SPEC_UUID("user_id"),
                                                SPEC_POSITIVE("amount_cents", STREAMS_MAX_INTEGER),
                                                SPEC_END};
static const struct spec_field failed_fields[] = {SPEC_UUID("order_id"), SPEC_UUID("user_id"),
                                                  SPEC_WORD("reason"), SPEC_END};

const struct stream_type payments_emits[] = {
    [OUT_OPENED] = {"payments.events", "account.opened", opened_fields,
                    .summary = "a user's account, with the initial credit"},
    [OUT_CREDITED] = {"payments.events", "account.credited", credited_fields,
                      .summary = "money added; balance_cents is the new balance"},
    [OUT_SUCCEEDED] = {"payments.events", "payment.succeeded", paid_fields,
                       .summary = "an order was charged"},
    [OUT_REFUNDED] = {"payments.events", "payment.refunded", paid_fields,
                      .summary = "an order's charge was given back"},
    [OUT_FAILED] = {"payments.events", "payment.failed", failed_fields,
                    .summary = "no charge: insufficient_funds, no_account, refunded, ..."},
    {NULL},
};

static int emit(struct payments *p, enum pay_out out, json_t *data, const char *trace)
{
    return outbox_emit(p->svc->outbox, &payments_emits[out], data, trace, NULL);
}

/* payment.failed {order_id, user_id, reason} when reason is not NULL, else
 * out {order_id, user_id, amount_cents} (payment.succeeded or .refunded). */
static int emit_payment(struct payments *p, enum pay_out out, const char *order_id,
                        const struct payments_payment *pm, const char *reason, const char *trace)
{
    if (reason != NULL)
        return emit(p, OUT_FAILED,
                    json_pack("{s:s, s:s, s:s}", "order_id", order_id, "user_id", pm->user_id,
                              "reason", reason),
                    trace);
    return emit(p, out,
                json_pack("{s:s, s:s, s:I}", "order_id", order_id, "user_id", pm->user_id,
                          "amount_cents", (json_int_t)pm->amount),
                trace);
}

/* Copies the id field name of msg's data in lower case. Its spec checked it
 * is a UUID; a refusal guards the gap anyway. */
static int msg_id(struct stream_msg *msg, const char *name, char out[IDS_UUID_LEN + 1])
{
    if (stream_msg_uuid(msg, name, out) < 0)
        return stream_msg_reject(msg, "data.%s: expected a UUID", name);
    return 0;
}

static const char *trace_of(const struct stream_msg *msg, const char *fallback)
{
    return stream_msg_trace(msg) ? stream_msg_trace(msg) : fallback;
}

/* ---------------------------------------------------------------------------
 * users.events
 * ------------------------------------------------------------------------- */

static int on_registered(struct stream_msg *msg, void *data)
{
    struct payments *p = data;
    char user_id[IDS_UUID_LEN + 1], at[CLOCK_ISO8601_LEN + 1];
    const char *trace;
    int rc = msg_id(msg, "user_id", user_id);

    if (rc != 0)
        return rc;
    trace = trace_of(msg, user_id);
    if (clock_iso8601(at, sizeof(at)) < 0)
        return -EIO;
    rc = payments_account_open(p, user_id, p->initial_cents, at);
    if (rc == 0) {
        log_write(LOG_LEVEL_INFO, trace, "account of user %s exists: left alone", user_id);
        return 0;
    }
    if (rc < 0)
        return rc;
    rc = emit(
        p, OUT_OPENED,
        json_pack("{s:s, s:I}", "user_id", user_id, "balance_cents", (json_int_t)p->initial_cents),
        trace);
    if (rc == 0)
        log_write(LOG_LEVEL_INFO, trace, "account opened user=%s balance_cents=%lld", user_id,
                  (long long)p->initial_cents);
    return rc;
}

/* ---------------------------------------------------------------------------
 * payment.charge
 * ------------------------------------------------------------------------- */

/* The order was charged before: change nothing, answer what was decided. */
static int charge_replay(struct payments *p, const struct charge *c,
                         const struct payments_payment *old)
{
    const char *reason = old->status == PAYMENTS_FAILED     ? old->reason
                         : old->status == PAYMENTS_REFUNDED ? PAYMENTS_REASON_REFUNDED
                                                            : NULL;
    int rc;

    if (strcmp(old->user_id, c->pm.user_id) != 0 || old->amount != c->pm.amount)
        log_write(LOG_LEVEL_WARN, c->trace,
                  "payment.charge for order %s (user %s, %lld cents) differs from the recorded "
                  "one (user %s, %lld cents); answering the recorded outcome",
                  c->order_id, c->pm.user_id, (long long)c->pm.amount, old->user_id,
                  (long long)old->amount);
    rc = emit_payment(p, OUT_SUCCEEDED, c->order_id, old, reason, c->trace);
    if (rc == 0)
        log_write(LOG_LEVEL_INFO, c->trace,
                  "payment.charge again for order=%s: already %s, nothing charged; sent %s",
                  c->order_id, payments_status_name(old->status),
                  payments_emits[reason ? OUT_FAILED : OUT_SUCCEEDED].type);
    return rc;
}

/* Records the charge failed with reason; nothing moves. */
static int charge_fail(struct payments *p, struct charge *c, const char *reason)
{
    size_t n = strlen(reason);
    int rc;

    if (n >= sizeof(c->pm.reason))
        return -EINVAL;
    memcpy(c->pm.reason, reason, n + 1);
    c->pm.status = PAYMENTS_FAILED;
    rc = payments_payment_insert(p, c->order_id, &c->pm, c->at);
    if (rc == 0)
        rc = emit_payment(p, OUT_FAILED, c->order_id, &c->pm, reason, c->trace);
    if (rc == 0)
        log_write(LOG_LEVEL_INFO, c->trace, "payment failed order=%s user=%s amount_cents=%lld: %s",
                  c->order_id, c->pm.user_id, (long long)c->pm.amount, reason);
    return rc;
}

/* The first charge of the order: debit the account, or record why not. */
static int charge_decide(struct payments *p, struct charge *c)
{
    struct payments_account a;
    int64_t amount = c->pm.amount;
    int rc = payments_account_get(p, c->pm.user_id, &a);

    if (rc == -ENOENT)
        return charge_fail(p, c, PAYMENTS_REASON_NO_ACCOUNT);
    if (rc < 0)
        return rc;
    if (a.balance < amount)
        return charge_fail(p, c, PAYMENTS_REASON_INSUFFICIENT);
    if (a.charged > PAYMENTS_MAX_TOTAL - amount)
        return charge_fail(p, c, PAYMENTS_REASON_ACCOUNT_LIMIT);
    a.balance -= amount;
    a.charged += amount;
    c->pm.status = PAYMENTS_SUCCEEDED;
    if ((rc = payments_account_put(p, c->pm.user_id, &a, c->at)) < 0 ||
        (rc = payments_payment_insert(p, c->order_id, &c->pm, c->at)) < 0 ||
        (rc = emit_payment(p, OUT_SUCCEEDED, c->order_id, &c->pm, NULL, c->trace)) < 0)
        return rc;
    log_write(LOG_LEVEL_INFO, c->trace,
              "payment succeeded order=%s user=%s amount_cents=%lld balance_cents=%lld",
              c->order_id, c->pm.user_id, (long long)amount, (long long)a.balance);
    return 0;
}

static int on_charge(struct stream_msg *msg, void *data)
{
    struct payments *p = data;
    struct payments_payment old;
    struct charge c;
    int rc;

    memset(&c, 0, sizeof(c));
    if ((rc = msg_id(msg, "order_id", c.order_id)) != 0 ||
        (rc = msg_id(msg, "user_id", c.pm.user_id)) != 0)
        return rc;
    c.pm.amount = stream_msg_int(msg, "amount_cents", 0);
    c.trace = trace_of(msg, c.order_id);
    rc = payments_payment_get(p, c.order_id, &old);
    if (rc == 0)
        return charge_replay(p, &c, &old);
    if (rc != -ENOENT)
        return rc;
    if (clock_iso8601(c.at, sizeof(c.at)) < 0)
        return -EIO;
    return charge_decide(p, &c);
}

/* ---------------------------------------------------------------------------
 * payment.refund
 * ------------------------------------------------------------------------- */

/* Gives a succeeded charge back. */
static int refund_apply(struct payments *p, const char *order_id, struct payments_payment *pm,
                        const char *trace)
{
    char at[CLOCK_ISO8601_LEN + 1];
    struct payments_account a;
    int rc = payments_account_get(p, pm->user_id, &a);

    if (rc == -ENOENT) {
        /* Accounts are never deleted: the database was changed behind us. */
        log_write(LOG_LEVEL_ERROR, trace, "refund of order %s: no account for user %s", order_id,
                  pm->user_id);
        return -EIO;
    }
    if (rc < 0)
        return rc;
    if (a.balance > PAYMENTS_MAX_TOTAL - pm->amount || a.refunded > a.charged - pm->amount) {
        log_write(LOG_LEVEL_ERROR, trace, "refund of order %s: account totals out of range",
                  order_id);
        return -EOVERFLOW;
    }
    a.balance += pm->amount;
    a.refunded += pm->amount;
    if (clock_iso8601(at, sizeof(at)) < 0)
        return -EIO;
    if ((rc = payments_account_put(p, pm->user_id, &a, at)) < 0 ||
        (rc = payments_payment_set_status(p, order_id, PAYMENTS_REFUNDED, at)) < 0 ||
        (rc = emit_payment(p, OUT_REFUNDED, order_id, pm, NULL, trace)) < 0)
        return rc;
    log_write(LOG_LEVEL_INFO, trace,
              "payment refunded order=%s user=%s amount_cents=%lld "
              "balance_cents=%lld",
              order_id, pm->user_id, (long long)pm->amount, (long long)a.balance);
    return 0;
}

static int on_refund(struct stream_msg *msg, void *data)
{
    struct payments *p = data;
    char order_id[IDS_UUID_LEN + 1];
    struct payments_payment pm;
    const char *trace;
    int rc = msg_id(msg, "order_id", order_id);

    if (rc != 0)
        return rc;
    trace = trace_of(msg, order_id);
    rc = payments_payment_get(p, order_id, &pm);
    if (rc == -ENOENT) {
        log_write(LOG_LEVEL_INFO, trace, "refund refused order=%s: no charge recorded", order_id);
        return stream_msg_reject(msg, "no_payment: no charge recorded for order %s", order_id);
    }
    if (rc < 0)
        return rc;
    switch (pm.status) {
    case PAYMENTS_FAILED:
        log_write(LOG_LEVEL_INFO, trace,
                  "refund for order=%s: its charge failed (%s), nothing to give "
                  "back",
                  order_id, pm.reason);
        return 0;
    case PAYMENTS_REFUNDED:
        rc = emit_payment(p, OUT_REFUNDED, order_id, &pm, NULL, trace);
        if (rc == 0)
            log_write(LOG_LEVEL_INFO, trace,
                      "refund again for order=%s: already refunded, nothing "
                      "moved; sent %s",
                      order_id, payments_emits[OUT_REFUNDED].type);
        return rc;
    case PAYMENTS_SUCCEEDED:
        break;
    }
    return refund_apply(p, order_id, &pm, trace);
}

/* ---------------------------------------------------------------------------
 * account.credit
 * ------------------------------------------------------------------------- */

static int on_credit(struct stream_msg *msg, void *data)
{
    struct payments *p = data;
    char user_id[IDS_UUID_LEN + 1], at[CLOCK_ISO8601_LEN + 1];
    int64_t amount = stream_msg_int(msg, "amount_cents", 0);
    struct payments_account a;
    const char *trace;
    int rc = msg_id(msg, "user_id", user_id);

    if (rc != 0)
        return rc;
    trace = trace_of(msg, user_id);
    rc = payments_account_get(p, user_id, &a);
    if (rc == -ENOENT) {
        log_write(LOG_LEVEL_INFO, trace, "credit refused user=%s: no account", user_id);
        return stream_msg_reject(msg, "no_account: no account for user %s", user_id);
    }
    if (rc < 0)
        return rc;
    if (a.balance > STREAMS_MAX_INTEGER - amount || a.credited > PAYMENTS_MAX_TOTAL - amount) {
        log_write(LOG_LEVEL_INFO, trace, "credit refused user=%s amount_cents=%lld: balance limit",
                  user_id, (long long)amount);
        return stream_msg_reject(msg, "balance_limit: the balance of user %s would pass %lld",
                                 user_id, STREAMS_MAX_INTEGER);
    }
    a.balance += amount;
    a.credited += amount;
    if (clock_iso8601(at, sizeof(at)) < 0)
        return -EIO;
    if ((rc = payments_account_put(p, user_id, &a, at)) < 0 ||
        (rc = emit(p, OUT_CREDITED,
                   json_pack("{s:s, s:I, s:I}", "user_id", user_id, "amount_cents",
                             (json_int_t)amount, "balance_cents", (json_int_t)a.balance),
                   trace)) < 0)
        return rc;
    log_write(LOG_LEVEL_INFO, trace,
              "account credited user=%s amount_cents=%lld balance_cents=%lld", user_id,
              (long long)amount, (long long)a.balance);
    return 0;
}

/* ---------------------------------------------------------------------------
 * Wiring
 * ------------------------------------------------------------------------- */

/* What payments consumes (DESIGN.md §12). */
static const struct spec_field registered_fields[] = {
    SPEC_UUID("user_id"), SPEC_TEXT("name", STREAMS_MAX_NAME), SPEC_EMAIL("email"), SPEC_END};
static const struct spec_field charge_fields[] = {
    SPEC_UUID("order_id"), SPEC_UUID("user_id"), SPEC_POSITIVE("amount_cents", STREAMS_MAX_INTEGER),
    SPEC_END};
static const struct spec_field refund_fields[] = {SPEC_UUID("order_id"), SPEC_END};
static const struct spec_field credit_fields[] = {
    SPEC_UUID("user_id"), SPEC_POSITIVE("amount_cents", STREAMS_MAX_INTEGER), SPEC_END};

const struct stream_type payments_consumes[] = {
    {"users.events", "user.registered", registered_fields, on_registered,
     "open the user's account with INITIAL_CREDIT_CENTS"},
    {"payments.commands", "payment.charge", charge_fields, on_charge,
     "charge an order at most once"},
    {"payments.commands", "payment.refund", refund_fields, on_refund,
     "give a succeeded charge back"},
    {"payments.commands", "account.credit", credit_fields, on_credit, "add money to an account"},
    {NULL},
};

void payments_events_start(struct payments *p)
{
    service_consume(p->svc, p, payments_unref);
}
