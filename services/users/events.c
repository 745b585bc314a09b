/* events.c -- the users service's stream side (DESIGN.md §5, §6, §8).
 *
 * Emits user.registered (users.events) in the transaction that creates a
 * user, whichever way it was created. Consumes users.commands:
 * user.register {name, email} creates a user without a password -- no
 * password ever travels over a stream, so such a user exists for the other
 * services but cannot obtain a token. It is validated like the HTTP route;
 * an invalid or already registered email is a business refusal, dead-lettered
 * once with its reason, never retried. */
#include "users.h"

#include <errno.h>
#include <string.h>

#include <jansson.h>
#include <sqlite3.h>

#include <ripple/clock.h>
#include <ripple/ids.h>
#include "input.h"
#include <ripple/log.h>
#include <ripple/outbox.h>
#include <ripple/service.h>
#include <ripple/store.h>
#include <ripple/stream_consumer.h>
#include <ripple/streams.h>

struct users_events {
    struct service *svc;
    struct sqlite3_stmt *insert, *by_email;
};

/* What users emits (DESIGN.md §12). */
static const struct spec_field registered_fields[] = {
    SPEC_UUID("user_id"),
    SPEC_TEXT("name", STREAMS_MAX_NAME),
    SPEC_EMAIL("email"),
    SPEC_END,
};

const struct stream_type users_emits[] = {
    {"users.events", "user.registered", registered_fields,
     .summary = "a user exists (registered over HTTP or imported by user.register)"},
    {NULL},
};

int users_emit_registered(struct service *svc, const char *id, const char *name, const char *email,
                          const char *trace)
{
    return outbox_emit(svc->outbox, &users_emits[0],
                       json_pack("{s:s, s:s, s:s}", "user_id", id, "name", name, "email", email),
                       trace ? trace : id, NULL);
}

static int email_taken(struct users_events *ue, const char *email)
{
    int rc = store_query(ue->svc->store, ue->by_email, "users: email lookup", "s", email);

    if (rc > 0)
        store_reset(ue->by_email);
    return rc;
}

static int insert_imported(struct users_events *ue, const char *id, const char *name,
                           const char *email)
{
    char created_at[32];

    if (clock_iso8601(created_at, sizeof(created_at)) < 0)
        return -EIO;
    return store_exec(ue->svc->store, ue->insert, "users: import insert", "ssss", id, name, email,
                      created_at);
}

/* user.register: data is already checked against its declared spec. */
static int on_register(struct stream_msg *msg, void *data)
{
    struct users_events *ue = data;
    const char *name = stream_msg_str(msg, "name"), *email = stream_msg_str(msg, "email");
    size_t nlen = strlen(name), elen = strlen(email);
    char lower[INPUT_EMAIL_MAX + 1], trimmed[INPUT_NAME_MAX + 1], id[IDS_UUID_LEN + 1];
    const char *problem;
    int rc;

    input_trim(&name, &nlen);
    input_trim(&email, &elen);
    if ((problem = input_name_problem(name, nlen)) != NULL)
        return stream_msg_reject(msg, "data.name: %s", problem);
    if ((problem = input_email_problem(email, elen)) != NULL)
        return stream_msg_reject(msg, "data.email: %s", problem);
    input_lower(lower, email, elen);
    memcpy(trimmed, name, nlen);
    trimmed[nlen] = '\0';
    rc = email_taken(ue, lower);
    if (rc != 0)
        return rc > 0 ? stream_msg_reject(msg, "email_taken: %s is already registered", lower) : rc;
    ids_uuid4(id);
    if ((rc = insert_imported(ue, id, trimmed, lower)) < 0 ||
        (rc = users_emit_registered(ue->svc, id, trimmed, lower, stream_msg_trace(msg))) < 0)
        return rc;
    log_write(LOG_LEVEL_INFO, stream_msg_trace(msg), "user imported id=%s from %s", id,
              msg->entry_id);
    return 0;
}

/* What users consumes: an import path (no password travels). */
static const struct spec_field register_fields[] = {
    SPEC_TEXT("name", STREAMS_MAX_NAME),
    SPEC_EMAIL("email"),
    SPEC_END,
};

const struct stream_type users_consumes[] = {
    {"users.commands", "user.register", register_fields, on_register,
     "import a user without a password (it cannot log in)"},
    {NULL},
};

int users_events_start(struct service *svc)
{
    struct users_events *ue = calloc(1, sizeof(*ue));
    int rc;

    if (ue == NULL)
        return -ENOMEM;
    ue->svc = svc;
    if ((rc = store_prepare(svc->store,
                            "INSERT INTO users (id, name, email, created_at) VALUES (?, ?, ?, ?)",
                            &ue->insert)) < 0 ||
        (rc = store_prepare(svc->store, "SELECT 1 FROM users WHERE email = ?", &ue->by_email)) <
            0) {
        free(ue);
        return rc;
    }
    service_consume(svc, ue, free);
    return 0;
}
