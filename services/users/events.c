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

int users_emit_registered(struct service *svc, const char *id, const char *name, const char *email,
                          const char *trace)
{
    json_t *data = json_pack("{s:s, s:s, s:s}", "user_id", id, "name", name, "email", email);
    int rc;

    if (data == NULL)
        return -ENOMEM;
    rc = outbox_append(svc->outbox, STREAM_USERS_EVENTS, EVENT_USER_REGISTERED, data,
                       trace ? trace : id, NULL);
    json_decref(data);
    return rc;
}

static int email_taken(struct users_events *ue, const char *email)
{
    int rc;

    sqlite3_bind_text(ue->by_email, 1, email, -1, SQLITE_STATIC);
    rc = sqlite3_step(ue->by_email);
    store_reset(ue->by_email);
    return rc == SQLITE_ROW ? 1 : rc == SQLITE_DONE ? 0 : -EIO;
}

static int insert_imported(struct users_events *ue, const char *id, const char *name,
                           const char *email)
{
    char created_at[32];
    int rc;

    if (clock_iso8601(created_at, sizeof(created_at)) < 0)
        return -EIO;
    sqlite3_bind_text(ue->insert, 1, id, -1, SQLITE_STATIC);
    sqlite3_bind_text(ue->insert, 2, name, -1, SQLITE_STATIC);
    sqlite3_bind_text(ue->insert, 3, email, -1, SQLITE_STATIC);
    sqlite3_bind_text(ue->insert, 4, created_at, -1, SQLITE_STATIC);
    rc = sqlite3_step(ue->insert) == SQLITE_DONE ? 0 : -EIO;
    if (rc < 0)
        log_error("users: import insert: %s", store_errmsg(ue->svc->store));
    store_reset(ue->insert);
    return rc;
}

/* user.register: data is already checked against the catalog's spec. */
static int on_register(struct stream_msg *msg, struct users_events *ue)
{
    const char *name = json_string_value(json_object_get(msg->data, "name"));
    const char *email = json_string_value(json_object_get(msg->data, "email"));
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
        (rc = users_emit_registered(ue->svc, id, trimmed, lower,
                                    msg->trace[0] ? msg->trace : NULL)) < 0)
        return rc;
    log_write(LOG_LEVEL_INFO, msg->trace[0] ? msg->trace : NULL, "user imported id=%s from %s", id,
              msg->entry_id);
    return 0;
}

static int on_command(struct stream_msg *msg, void *data)
{
    if (strcmp(msg->type, EVENT_USER_REGISTER) == 0)
        return on_register(msg, data);
    /* The catalog lists no other command for users.commands: envelope_parse
     * has dead-lettered anything else before we get here. */
    return stream_msg_reject(msg, "no handler for %s", msg->type);
}

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
    stream_consumer_attach(svc, STREAM_USERS_COMMANDS, on_command, ue, free);
    return 0;
}
