/* model.c -- the payments service's database: accounts and payments rows.
 *
 * Thin, bound statements over the two tables of schema.sql, prepared once at
 * start (the store finalizes them). Readers copy every column they return
 * before the statement is reset; writers expect the caller's open
 * transaction (the consumer's, under the entry's savepoint), so a failure
 * anywhere in a handler rolls all of its writes back together. The money
 * arithmetic is the caller's (events.c); the schema's CHECKs hold every
 * write to the invariant. Loop thread only. */
#include "payments.h"

#include <errno.h>
#include <string.h>

#include <sqlite3.h>

#include <ripple/log.h>
#include <ripple/service.h>
#include <ripple/store.h>

static const char *const sql_acct_get =
    "SELECT balance_cents, initial_cents, credited_cents, charged_cents, refunded_cents, "
    "updated_at FROM accounts WHERE user_id = ?1";
static const char *const sql_acct_open =
    "INSERT INTO accounts (user_id, balance_cents, initial_cents, created_at, updated_at) "
    "VALUES (?1, ?2, ?2, ?3, ?3) ON CONFLICT (user_id) DO NOTHING";
static const char *const sql_acct_put =
    "UPDATE accounts SET balance_cents = ?2, credited_cents = ?3, charged_cents = ?4, "
    "refunded_cents = ?5, updated_at = ?6 WHERE user_id = ?1";
static const char *const sql_pay_get =
    "SELECT user_id, amount_cents, status, reason, created_at FROM payments WHERE order_id = ?1";
static const char *const sql_pay_insert =
    "INSERT INTO payments (order_id, user_id, amount_cents, status, reason, created_at, "
    "updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)";
static const char *const sql_pay_status =
    "UPDATE payments SET status = ?2, updated_at = ?3 WHERE order_id = ?1";

int payments_model_prepare(struct payments *p)
{
    const struct store_sql list[] = {
        {sql_acct_get, &p->acct_get},     {sql_acct_open, &p->acct_open},
        {sql_acct_put, &p->acct_put},     {sql_pay_get, &p->pay_get},
        {sql_pay_insert, &p->pay_insert}, {sql_pay_status, &p->pay_status},
    };

    return store_prepare_all(p->svc->store, list, ARRAY_SIZE(list));
}

/* Copies column i (text, may be NULL: "") into buf. Returns 0, or -EIO
 * when it does not fit (a row no writer of ours made). */
static int copy_text(sqlite3_stmt *st, int i, char *buf, size_t len)
{
    const unsigned char *s = sqlite3_column_text(st, i);
    size_t n = (size_t)sqlite3_column_bytes(st, i);

    if (s == NULL)
        n = 0;
    if (n >= len)
        return -EIO;
    if (n > 0)
        memcpy(buf, s, n);
    buf[n] = '\0';
    return 0;
}

/* Runs a writer: SQLITE_DONE is 0, anything else -EIO (logged with what). */
static int step_write(struct payments *p, sqlite3_stmt *st, const char *what)
{
    int rc = sqlite3_step(st);

    if (rc != SQLITE_DONE)
        log_error("payments: %s: %s", what, store_errmsg(p->svc->store));
    store_reset(st);
    return rc == SQLITE_DONE ? 0 : -EIO;
}

/* Ends a reader. step is sqlite3_step's result (or a failed bind's); copied
 * is what copying the row gave (0 or -EIO), used only when step is a row. */
static int read_done(struct payments *p, sqlite3_stmt *st, int step, int copied, const char *what)
{
    int rc = step == SQLITE_ROW ? copied : step == SQLITE_DONE ? -ENOENT : -EIO;

    if (rc == -EIO)
        log_error("payments: %s: %s", what,
                  step == SQLITE_ROW ? "malformed row" : store_errmsg(p->svc->store));
    store_reset(st);
    return rc;
}

int payments_account_get(struct payments *p, const char *user_id, struct payments_account *out)
{
    sqlite3_stmt *st = p->acct_get;
    int rc = sqlite3_bind_text(st, 1, user_id, -1, SQLITE_STATIC), copied = 0;

    if (rc == SQLITE_OK)
        rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        out->balance = sqlite3_column_int64(st, 0);
        out->initial = sqlite3_column_int64(st, 1);
        out->credited = sqlite3_column_int64(st, 2);
        out->charged = sqlite3_column_int64(st, 3);
        out->refunded = sqlite3_column_int64(st, 4);
        copied = copy_text(st, 5, out->updated_at, sizeof(out->updated_at));
    }
    return read_done(p, st, rc, copied, "read account");
}

int payments_account_open(struct payments *p, const char *user_id, int64_t initial, const char *at)
{
    sqlite3_stmt *st = p->acct_open;
    int rc;

    sqlite3_bind_text(st, 1, user_id, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, initial);
    sqlite3_bind_text(st, 3, at, -1, SQLITE_STATIC);
    rc = step_write(p, st, "open account");
    if (rc < 0)
        return rc;
    return sqlite3_changes(store_db(p->svc->store)) > 0 ? 1 : 0;
}

int payments_account_put(struct payments *p, const char *user_id, const struct payments_account *a,
                         const char *at)
{
    sqlite3_stmt *st = p->acct_put;

    sqlite3_bind_text(st, 1, user_id, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, a->balance);
    sqlite3_bind_int64(st, 3, a->credited);
    sqlite3_bind_int64(st, 4, a->charged);
    sqlite3_bind_int64(st, 5, a->refunded);
    sqlite3_bind_text(st, 6, at, -1, SQLITE_STATIC);
    return step_write(p, st, "update account");
}

/* The status word of a row, as stored (the CHECK allows only these). */
static int status_parse(const unsigned char *s, enum payments_status *out)
{
    static const enum payments_status all[] = {PAYMENTS_SUCCEEDED, PAYMENTS_FAILED,
                                               PAYMENTS_REFUNDED};

    for (size_t i = 0; s != NULL && i < ARRAY_SIZE(all); i++) {
        if (strcmp((const char *)s, payments_status_name(all[i])) == 0) {
            *out = all[i];
            return 0;
        }
    }
    return -EIO;
}

int payments_payment_get(struct payments *p, const char *order_id, struct payments_payment *out)
{
    sqlite3_stmt *st = p->pay_get;
    int rc = sqlite3_bind_text(st, 1, order_id, -1, SQLITE_STATIC), copied = 0;

    if (rc == SQLITE_OK)
        rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        out->amount = sqlite3_column_int64(st, 1);
        copied = copy_text(st, 0, out->user_id, sizeof(out->user_id));
        if (copied == 0)
            copied = status_parse(sqlite3_column_text(st, 2), &out->status);
        if (copied == 0)
            copied = copy_text(st, 3, out->reason, sizeof(out->reason));
        if (copied == 0)
            copied = copy_text(st, 4, out->created_at, sizeof(out->created_at));
    }
    return read_done(p, st, rc, copied, "read payment");
}

int payments_payment_insert(struct payments *p, const char *order_id,
                            const struct payments_payment *pm, const char *at)
{
    sqlite3_stmt *st = p->pay_insert;

    sqlite3_bind_text(st, 1, order_id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, pm->user_id, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, pm->amount);
    sqlite3_bind_text(st, 4, payments_status_name(pm->status), -1, SQLITE_STATIC);
    if (pm->status == PAYMENTS_FAILED)
        sqlite3_bind_text(st, 5, pm->reason, -1, SQLITE_STATIC);
    else
        sqlite3_bind_null(st, 5);
    sqlite3_bind_text(st, 6, at, -1, SQLITE_STATIC);
    return step_write(p, st, "insert payment");
}

int payments_payment_set_status(struct payments *p, const char *order_id, enum payments_status s,
                                const char *at)
{
    sqlite3_stmt *st = p->pay_status;

    sqlite3_bind_text(st, 1, order_id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, payments_status_name(s), -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, at, -1, SQLITE_STATIC);
    return step_write(p, st, "update payment");
}
