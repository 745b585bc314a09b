/* payments.c -- the payments module's start and stop. See payments.h.
 *
 * Checks INITIAL_CREDIT_CENTS before the database is touched, opens the
 * store, prepares the statements (model.c), then wires the routes (api.c)
 * and the two consumers (events.c). The one struct payments is freed when
 * the second consumer has released it; the statements belong to the store,
 * which the service closes after every consumer. Also the small helpers the
 * rest of the module shares: time stamps, ids, status names. */
#include "payments.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <ripple/config.h>
#include <ripple/ids.h>
#include <ripple/log.h>
#include <ripple/service.h>

#define PAYMENTS_CREDIT_DEFAULT 10000UL
#define PAYMENTS_CREDIT_MAX 1000000000000UL /* 10^12 cents */

void payments_unref(void *data)
{
    struct payments *p = data;

    if (--p->refs > 0)
        return;
    free(p);
}

const char *payments_status_name(enum payments_status s)
{
    switch (s) {
    case PAYMENTS_SUCCEEDED:
        return "succeeded";
    case PAYMENTS_FAILED:
        return "failed";
    case PAYMENTS_REFUNDED:
        return "refunded";
    }
    return "failed"; /* not reached: every status is listed */
}

int payments_service_start(struct service *svc)
{
    /* Checked before the database is touched: a bad setting is one line. */
    unsigned long initial = service_setting_uint(svc, "INITIAL_CREDIT_CENTS",
                                                 PAYMENTS_CREDIT_DEFAULT, 0, PAYMENTS_CREDIT_MAX);
    struct payments *p;
    int rc;

    service_open_store(svc);
    p = calloc(1, sizeof(*p));
    if (p == NULL)
        return -ENOMEM;
    p->svc = svc;
    p->initial_cents = (int64_t)initial;
    rc = payments_model_prepare(p);
    if (rc < 0) {
        free(p);
        return rc;
    }
    p->refs = 1; /* the consumers' (released once all have closed) */
    payments_api_start(p);
    payments_events_start(p);
    log_info("payments: new accounts open with %lu cents", initial);
    return 0;
}

MODULE_DEFINE(payments, 8004, payments_schema_sql, payments_emits, payments_consumes,
              payments_service_start);
