/* api.c -- the users service's HTTP routes (DESIGN.md §4, §8).
 *
 * POST /api/v1/users registers a user, POST /api/v1/auth/token trades an
 * email and a password for a JWT, GET /api/v1/users/{id} reads one user (the
 * user themself, or a service token). Passwords are hashed with
 * PBKDF2-HMAC-SHA256 on the libuv thread pool so the loop never blocks: the two
 * POST handlers answer later (deferred responses), from the after-work
 * callback, which runs on the loop thread like every SQLite call here.
 *
 * Owns struct users (the statements, prepared once at start and finalized by
 * the store; the PBKDF2 settings; the count of jobs in the pool), freed when
 * the service stops and the last job is over, and one struct hash_job per
 * request in the pool, freed by its after-work callback. At most
 * USERS_MAX_HASH_JOBS are in the pool (503 + Retry-After beyond). A password is copied only into
 * its job, wiped once hashed, and never reaches a response or a log. Unknown emails still pay for
 * one PBKDF2 run with the configured cost, so answer times do not tell which emails are registered.
 */
#include "users.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <sqlite3.h>
#include <uv.h>

#include <ripple/auth.h>
#include <ripple/clock.h>
#include <ripple/config.h>
#include <ripple/http_reply.h>
#include <ripple/http_router.h>
#include <ripple/http_server.h>
#include <ripple/ids.h>
#include <ripple/json_out.h>
#include "input.h"
#include <ripple/log.h>
#include <ripple/service.h>
#include <ripple/store.h>
#include <ripple/trace.h>

#define USERS_SALT_BYTES 16 /* for new hashes */
#define USERS_SALT_MAX 64   /* accepted from the database */
#define USERS_HASH_BYTES 32 /* PBKDF2 output, SHA-256 sized */
#define USERS_ITER_DEFAULT 600000
#define USERS_ITER_MIN 1000
#define USERS_ITER_MAX 10000000
/* The error code of a 404 for a user: more precise than the router's
 * not_found, so a caller (orders) can tell "no such user" from "no such
 * route" (a USERS_URL that names another service). */
#define USERS_NOT_FOUND "user_not_found"
#define USERS_TOKEN_TTL 3600   /* s */
#define USERS_MAX_HASH_JOBS 64 /* in the thread pool at once; 503 beyond */
#define USERS_JSON_MAX 4096    /* one user, escaped; fits every valid row */

static const char *const sql_by_id = "SELECT name, email, created_at FROM users WHERE id = ?1";
static const char *const sql_by_email =
    "SELECT id, pw_hash, pw_salt, pw_iterations FROM users WHERE email = ?1";
static const char *const sql_insert =
    "INSERT INTO users (id, name, email, pw_hash, pw_salt, pw_iterations, created_at) "
    "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)";

/* The salt of the dummy run for unknown emails; its value does not matter. */
static const unsigned char dummy_salt[USERS_SALT_BYTES] = {
    0x72, 0x69, 0x70, 0x70, 0x6c, 0x65, 0x2d, 0x75, 0x73, 0x65, 0x72, 0x73, 0x2d, 0x6e, 0x6f, 0x31,
};

struct users {
    struct service *svc;            /* borrowed: outlives the module */
    sqlite3_stmt *by_id;            /* owned by the store */
    sqlite3_stmt *by_email;         /* owned by the store */
    sqlite3_stmt *insert;           /* owned by the store */
    unsigned long iterations;       /* PBKDF2 rounds of new hashes and dummy runs */
    unsigned jobs;                  /* hash jobs in the thread pool */
    int stopping;                   /* the stop hook ran: no new jobs */
    service_stop_done_cb stop_done; /* the stop waits for jobs == 0 */
};

enum hash_kind { HASH_REGISTER, HASH_LOGIN };

/* One password hash in the thread pool. The work callback touches only
 * password, salt, iterations, want and the results. */
struct hash_job {
    uv_work_t work;
    struct users *u;          /* borrowed */
    struct http_request *req; /* answered by on_hash_done */
    enum hash_kind kind;
    unsigned long iterations;
    size_t password_len, salt_len;
    int found;  /* login: the email has a usable password hash */
    int hashed; /* PBKDF2 succeeded */
    int match;  /* login: found, hashed and equal to want */
    unsigned char salt[USERS_SALT_MAX];
    unsigned char hash[USERS_HASH_BYTES]; /* computed */
    unsigned char want[USERS_HASH_BYTES]; /* login: stored */
    char id[IDS_UUID_LEN + 1];            /* login: the user's id */
    char name[INPUT_NAME_MAX + 1];        /* register: trimmed */
    char email[INPUT_EMAIL_MAX + 1];      /* trimmed, lower-cased */
    char password[INPUT_PASSWORD_MAX];    /* not NUL-terminated; wiped */
};

/* The fields of a user as strings, borrowed; the view of one JSON answer. */
struct user_view {
    const char *id, *name, *email, *created_at;
};

/* ---------------------------------------------------------------------------
 * Answers
 * ------------------------------------------------------------------------- */

/* Answers {id, name, email, created_at} with status. The hot path of GET
 * /users/{id}: encoded into a stack buffer, no allocation but the
 * response's own copy. */
static void respond_user(struct http_request *req, int status, const struct user_view *v)
{
    char buf[USERS_JSON_MAX];
    struct json_out b;
    json_t *body;

    json_out_init(&b, buf, sizeof(buf));
    json_out_raw(&b, "{\"id\":");
    json_out_str(&b, v->id);
    json_out_raw(&b, ",\"name\":");
    json_out_str(&b, v->name);
    json_out_raw(&b, ",\"email\":");
    json_out_str(&b, v->email);
    json_out_raw(&b, ",\"created_at\":");
    json_out_str(&b, v->created_at);
    json_out_raw(&b, "}");
    if (!b.overflow) {
        http_reply_json_text(req, status, buf, b.len);
        return;
    }
    /* Only a row written by something that skipped the limits gets here. */
    body = json_pack("{s:s, s:s, s:s, s:s}", "id", v->id, "name", v->name, "email", v->email,
                     "created_at", v->created_at);
    if (body == NULL) {
        log_error("users: cannot encode user %s", v->id);
        http_reply_error(req, 500, NULL, "internal error");
        return;
    }
    http_reply_json(req, status, body);
}

/* Refuses a password request while stopping or while the pool is full.
 * Returns 1 when it answered req. */
static int refuse_busy(struct users *u, struct http_request *req)
{
    if (u->stopping) {
        http_reply_error(req, 503, NULL, "the service is stopping");
        return 1;
    }
    if (u->jobs < USERS_MAX_HASH_JOBS)
        return 0;
    if (http_add_header(req, "Retry-After", "1") < 0)
        log_warn("users: no room for Retry-After");
    http_reply_error(req, 503, NULL, "too many password checks in progress, retry shortly");
    return 1;
}

/* ---------------------------------------------------------------------------
 * Statements (loop thread)
 * ------------------------------------------------------------------------- */

/* Copies a credential row into job, when it is usable: an imported user
 * (NULL hash) or a row with odd parameters leaves job->found 0. */
static void load_credentials(sqlite3_stmt *st, struct hash_job *job)
{
    const unsigned char *id = sqlite3_column_text(st, 0);
    size_t id_len = (size_t)sqlite3_column_bytes(st, 0);
    const void *hash = sqlite3_column_blob(st, 1);
    size_t hash_len = (size_t)sqlite3_column_bytes(st, 1);
    const void *salt = sqlite3_column_blob(st, 2);
    size_t salt_len = (size_t)sqlite3_column_bytes(st, 2);
    sqlite3_int64 iterations = sqlite3_column_int64(st, 3);

    if (id == NULL || id_len != IDS_UUID_LEN || hash == NULL || hash_len != USERS_HASH_BYTES)
        return;
    if (salt == NULL || salt_len > USERS_SALT_MAX || iterations < 1 || iterations > USERS_ITER_MAX)
        return;
    memcpy(job->id, id, IDS_UUID_LEN + 1);
    memcpy(job->want, hash, USERS_HASH_BYTES);
    memcpy(job->salt, salt, salt_len);
    job->salt_len = salt_len;
    job->iterations = (unsigned long)iterations;
    job->found = 1;
}

/* Looks email up. With job, loads its credentials. Returns 1 (found), 0 (not
 * found) or -EIO (logged). */
static int lookup_email(struct users *u, const char *email, struct hash_job *job)
{
    int rc = store_query(u->svc->store, u->by_email, "users: lookup by email", "s", email);

    if (rc > 0) {
        if (job != NULL)
            load_credentials(u->by_email, job);
        store_reset(u->by_email);
    }
    return rc;
}

/* Inserts the registered user. Returns 0, -EEXIST (the email was taken
 * meanwhile) or -EIO (logged). */
static int insert_user(struct users *u, const struct hash_job *job, const char *id,
                       const char *created_at)
{
    return store_exec(u->svc->store, u->insert, "users: insert", "sssbbIs", id, job->name,
                      job->email, job->hash, (size_t)USERS_HASH_BYTES, job->salt, job->salt_len,
                      (int64_t)job->iterations, created_at);
}

/* The user and its user.registered event, in one transaction. */
static int record_user(struct users *u, const struct hash_job *job, const char *id,
                       const char *created_at)
{
    struct store *st = u->svc->store;
    int rc = store_begin(st);

    if (rc < 0)
        return -EIO;
    rc = insert_user(u, job, id, created_at);
    if (rc == 0)
        rc = users_emit_registered(u->svc, id, job->name, job->email, NULL);
    if (rc < 0) {
        store_rollback(st);
        return rc;
    }
    return store_commit(st) < 0 ? -EIO : 0;
}

/* ---------------------------------------------------------------------------
 * Hash jobs (the work callback runs on a pool thread, the rest on the loop)
 * ------------------------------------------------------------------------- */

static struct hash_job *job_new(struct users *u, struct http_request *req, enum hash_kind kind)
{
    struct hash_job *job = calloc(1, sizeof(*job));

    if (job == NULL)
        return NULL;
    job->u = u;
    job->req = req;
    job->kind = kind;
    job->iterations = u->iterations;
    return job;
}

static void job_free(struct hash_job *job)
{
    OPENSSL_cleanse(job, sizeof(*job));
    free(job);
}

static void on_hash_work(uv_work_t *work)
{
    struct hash_job *job = container_of(work, struct hash_job, work);
    int same;

    job->hashed =
        PKCS5_PBKDF2_HMAC(job->password, (int)job->password_len, job->salt, (int)job->salt_len,
                          (int)job->iterations, EVP_sha256(), USERS_HASH_BYTES, job->hash) == 1;
    OPENSSL_cleanse(job->password, sizeof(job->password));
    /* Compare even for a dummy run, in constant time, so both paths match. */
    same = CRYPTO_memcmp(job->hash, job->want, USERS_HASH_BYTES) == 0;
    job->match = job->kind == HASH_LOGIN && (job->hashed & job->found & same);
    /* OpenSSL keeps per-thread state (its error queue) for this pool
     * thread; libuv never ends the thread, so free it after each job. */
    OPENSSL_thread_stop();
}

static void on_hash_done(uv_work_t *work, int status);

/* Queues job; on failure answers and frees it. Returns 0 or a libuv error. */
static int job_start(struct hash_job *job)
{
    struct users *u = job->u;
    int rc = uv_queue_work(u->svc->loop, &job->work, on_hash_work, on_hash_done);

    if (rc < 0) {
        log_error("users: uv_queue_work: %s", uv_strerror(rc));
        http_reply_error(job->req, 503, NULL, "cannot check passwords now");
        job_free(job);
        return rc;
    }
    u->jobs++;
    return 0;
}

/* Once the stop hook has run and the last job is over: frees u and tells the
 * service this module is done. Nothing calls into u afterwards: the service
 * stops dispatching requests before it runs the stop hooks (it closes the
 * HTTP server first), and the pool holds no job of ours. */
static void maybe_stopped(struct users *u)
{
    service_stop_done_cb done = u->stop_done;
    struct service *svc = u->svc;

    if (u->jobs > 0 || done == NULL)
        return;
    free(u);
    done(svc);
}

/* The after-work end of a registration: store the user, answer 201. A client
 * that went away still gets its user: the request was accepted. */
static void finish_register(struct hash_job *job)
{
    char id[IDS_UUID_LEN + 1], created_at[CLOCK_ISO8601_LEN + 1], location[64];
    struct user_view v = {id, job->name, job->email, created_at};
    int rc;

    if (!job->hashed || clock_iso8601(created_at, sizeof(created_at)) < 0) {
        log_error("users: cannot hash a password or read the clock");
        http_reply_internal(job->req);
        return;
    }
    ids_uuid4(id);
    rc = record_user(job->u, job, id, created_at);
    if (rc == -EEXIST) {
        http_reply_error(job->req, 409, NULL, "email already registered");
        return;
    }
    if (rc < 0) {
        http_reply_internal(job->req);
        return;
    }
    log_info("user created id=%s", id);
    rc = snprintf(location, sizeof(location), "/api/v1/users/%s", id);
    if (rc > 0 && (size_t)rc < sizeof(location) &&
        http_add_header(job->req, "Location", location) < 0)
        log_warn("users: no room for Location");
    respond_user(job->req, 201, &v);
}

/* The after-work end of a login: a token, or 401 for any mismatch. */
static void finish_login(struct hash_job *job)
{
    char *token = NULL;
    json_t *body;

    if (!job->hashed) {
        log_error("users: cannot hash a password");
        http_reply_internal(job->req);
        return;
    }
    if (!job->match) {
        http_reply_error(job->req, 401, NULL, "invalid email or password");
        return;
    }
    if (auth_sign(&job->u->svc->auth, job->id, NULL, USERS_TOKEN_TTL, &token) < 0) {
        log_error("users: cannot sign a token");
        http_reply_internal(job->req);
        return;
    }
    body = json_pack("{s:s, s:s, s:i}", "access_token", token, "token_type", "Bearer", "expires_in",
                     USERS_TOKEN_TTL);
    OPENSSL_cleanse(token, strlen(token));
    free(token);
    if (body == NULL) {
        http_reply_internal(job->req);
        return;
    }
    http_reply_json(job->req, 200, body);
}

static void on_hash_done(uv_work_t *work, int status)
{
    struct hash_job *job = container_of(work, struct hash_job, work);
    struct users *u = job->u;

    log_scope(u->svc->module->name);
    trace_set(job->req->traceparent); /* the request's trace, now that its hash is done */
    if (status == UV_ECANCELED)
        http_reply_error(job->req, 503, NULL, "the service is stopping");
    else if (job->kind == HASH_REGISTER)
        finish_register(job);
    else
        finish_login(job);
    trace_set(NULL);
    job_free(job);
    u->jobs--;
    maybe_stopped(u);
}

/* ---------------------------------------------------------------------------
 * POST /api/v1/users
 * ------------------------------------------------------------------------- */

/* The strings of a request body, borrowed from it; name and email trimmed. */
struct creds {
    const char *name, *email, *password;
    size_t name_len, email_len, password_len;
};

/* Parses req's body and checks its fields: every registration rule for
 * HASH_REGISTER, only "email and password are strings" for HASH_LOGIN.
 * Returns the body (new: decref it) with c filled, or NULL after answering
 * req (400, 422 or 500). */
static json_t *parse_creds(struct http_request *req, enum hash_kind kind, struct creds *c)
{
    int reg = kind == HASH_REGISTER;
    json_t *body, *fields;
    int bad = 0;

    if (http_reply_parse_object(req, &body) < 0)
        return NULL;
    fields = json_object();
    if (fields == NULL) {
        json_decref(body);
        http_reply_internal(req);
        return NULL;
    }
    if (reg)
        bad +=
            input_string(body, "name", 1, input_name_problem, fields, &c->name, &c->name_len) < 0;
    bad += input_string(body, "email", 1, reg ? input_email_problem : NULL, fields, &c->email,
                        &c->email_len) < 0;
    bad += input_string(body, "password", 0, reg ? input_password_problem : NULL, fields,
                        &c->password, &c->password_len) < 0;
    if (bad > 0) {
        json_decref(body);
        http_reply_invalid(req, fields);
        return NULL;
    }
    json_decref(fields);
    return body;
}

/* Copies c into job: the name (registrations), the email lower-cased and the
 * password. The lengths are within the job's buffers (checked by the caller). */
static void job_fill(struct hash_job *job, const struct creds *c)
{
    if (job->kind == HASH_REGISTER) {
        memcpy(job->name, c->name, c->name_len);
        job->name[c->name_len] = '\0';
    }
    input_lower(job->email, c->email, c->email_len);
    memcpy(job->password, c->password, c->password_len);
    job->password_len = c->password_len;
}

/* Parses and checks a registration into job. Returns 0, or -EINVAL after
 * answering req. */
static int read_register(struct http_request *req, struct hash_job *job)
{
    struct creds c;
    json_t *body = parse_creds(req, HASH_REGISTER, &c);

    if (body == NULL)
        return -EINVAL;
    job_fill(job, &c);
    json_decref(body);
    return 0;
}

static void on_register(struct http_request *req, const struct auth_claims *who, void *data)
{
    struct users *u = data;
    struct hash_job *job;
    int rc;

    (void)who;
    if (service_shed_write(u->svc, req) || refuse_busy(u, req))
        return;
    job = job_new(u, req, HASH_REGISTER);
    if (job == NULL) {
        http_reply_internal(req);
        return;
    }
    if (read_register(req, job) < 0) {
        job_free(job);
        return;
    }
    /* A taken email answers at once, without paying for a hash. */
    rc = lookup_email(u, job->email, NULL);
    if (rc == 0 && RAND_bytes(job->salt, USERS_SALT_BYTES) != 1)
        rc = -EIO;
    if (rc != 0) {
        if (rc > 0)
            http_reply_error(req, 409, NULL, "email already registered");
        else
            http_reply_internal(req);
        job_free(job);
        return;
    }
    job->salt_len = USERS_SALT_BYTES;
    job_start(job);
}

/* ---------------------------------------------------------------------------
 * POST /api/v1/auth/token
 * ------------------------------------------------------------------------- */

/* Parses a login into job. Returns 0, or -EINVAL after answering req: 400 or
 * 422 for a bad body, 401 at once for an email or password too long to be
 * anyone's (that says nothing about which emails exist). */
static int read_login(struct http_request *req, struct hash_job *job)
{
    struct creds c;
    json_t *body = parse_creds(req, HASH_LOGIN, &c);

    if (body == NULL)
        return -EINVAL;
    if (c.email_len > INPUT_EMAIL_MAX || c.password_len > INPUT_PASSWORD_MAX) {
        json_decref(body);
        http_reply_error(req, 401, NULL, "invalid email or password");
        return -EINVAL;
    }
    job_fill(job, &c);
    json_decref(body);
    return 0;
}

static void on_token(struct http_request *req, const struct auth_claims *who, void *data)
{
    struct users *u = data;
    struct hash_job *job;

    (void)who;
    if (refuse_busy(u, req))
        return;
    job = job_new(u, req, HASH_LOGIN);
    if (job == NULL) {
        http_reply_internal(req);
        return;
    }
    if (read_login(req, job) < 0) {
        job_free(job);
        return;
    }
    /* Unknown email, or no password: a dummy run with the configured cost. */
    memcpy(job->salt, dummy_salt, sizeof(dummy_salt));
    job->salt_len = sizeof(dummy_salt);
    if (lookup_email(u, job->email, job) < 0) {
        http_reply_internal(req);
        job_free(job);
        return;
    }
    job_start(job);
}

/* ---------------------------------------------------------------------------
 * GET /api/v1/users/{id}
 *
 * An id that is not a UUID names no user: 404 user_not_found for anyone (the
 * rule of every service's {id} routes). A well-formed id: the user themself
 * or a service token reads it; another user gets 403.
 * ------------------------------------------------------------------------- */

static void read_user(struct users *u, struct http_request *req, const char *id)
{
    sqlite3_stmt *st = u->by_id;
    struct user_view v = {id, NULL, NULL, NULL};
    int rc = store_query(u->svc->store, st, "users: read user", "s", id);

    if (rc == 0) {
        http_reply_error(req, 404, USERS_NOT_FOUND, "no such user");
        return;
    }
    if (rc > 0) { /* used before the reset: no copy needed */
        v.name = (const char *)sqlite3_column_text(st, 0);
        v.email = (const char *)sqlite3_column_text(st, 1);
        v.created_at = (const char *)sqlite3_column_text(st, 2);
    }
    if (rc > 0 && v.name != NULL && v.email != NULL && v.created_at != NULL)
        respond_user(req, 200, &v);
    else
        http_reply_internal(req);
    store_reset(st);
}

static void on_get_user(struct http_request *req, const struct auth_claims *who, void *data)
{
    char id[IDS_UUID_LEN + 1];

    if (http_param_uuid(req, "id", id) < 0) { /* 404 for anyone */
        http_reply_error(req, 404, USERS_NOT_FOUND, "no such user");
        return;
    }
    if (http_route_owner_only(req, who, id, "a user may read only their own record") == 0)
        read_user(data, req, id);
}

/* ---------------------------------------------------------------------------
 * Start and stop
 * ------------------------------------------------------------------------- */

/* The stop waits for the hashes in the pool: their inserts and answers need
 * the store, which the service closes only after every hook is done. */
static void on_stop(struct service *svc, void *data, service_stop_done_cb done)
{
    struct users *u = data;

    (void)svc;
    u->stopping = 1;
    u->stop_done = done;
    maybe_stopped(u);
}

static int prepare_statements(struct users *u)
{
    struct store *st = u->svc->store;
    int rc = store_prepare(st, sql_by_id, &u->by_id);

    if (rc == 0)
        rc = store_prepare(st, sql_by_email, &u->by_email);
    if (rc == 0)
        rc = store_prepare(st, sql_insert, &u->insert);
    if (rc < 0)
        log_error("users: cannot prepare statements: %s", store_errmsg(st));
    return rc;
}

/* ---------------------------------------------------------------------------
 * The routes' description (ripple/openapi.h): GET /api/v1/openapi.json
 * ------------------------------------------------------------------------- */

static const struct openapi_schema users_schemas[] = {
    {"User", "{\"type\":\"object\",\"required\":[\"id\",\"name\",\"email\",\"created_at\"],"
             "\"additionalProperties\":false,\"properties\":{"
             "\"id\":" OPENAPI_UUID ",\"name\":{\"type\":\"string\",\"minLength\":1},"
             "\"email\":{\"type\":\"string\",\"format\":\"email\","
             "\"description\":\"Trimmed and lower-cased.\"},"
             "\"created_at\":" OPENAPI_TIME "}}"},
    {"Registration",
     "{\"type\":\"object\",\"required\":[\"name\",\"email\",\"password\"],\"properties\":{"
     "\"name\":{\"type\":\"string\",\"minLength\":1,\"maxLength\":100,"
     "\"description\":\"Trimmed; 1 to 100 bytes, no control characters.\"},"
     "\"email\":{\"type\":\"string\",\"format\":\"email\",\"maxLength\":254,"
     "\"description\":\"Trimmed and compared case-insensitively.\"},"
     "\"password\":{\"type\":\"string\",\"minLength\":8,\"description\":\"8 characters or more "
     "(at most 1024 bytes).\"}}}"},
    {"Credentials", "{\"type\":\"object\",\"required\":[\"email\",\"password\"],\"properties\":{"
                    "\"email\":{\"type\":\"string\"},\"password\":{\"type\":\"string\"}}}"},
    {"Token", "{\"type\":\"object\",\"required\":[\"access_token\",\"token_type\",\"expires_in\"],"
              "\"additionalProperties\":false,\"properties\":{"
              "\"access_token\":{\"type\":\"string\",\"description\":\"An HS256 JWT whose sub is "
              "the user's id.\"},\"token_type\":{\"const\":\"Bearer\"},"
              "\"expires_in\":{\"type\":\"integer\",\"description\":\"Seconds.\"}}}"},
    {NULL, NULL},
};

static const struct openapi_route doc_register = {
    .summary = "Register a user",
    .description = "Public. Hashes the password (PBKDF2) off the loop, stores the user and its "
                   "`user.registered` event in one transaction; `Location` names the new user.",
    .request = OPENAPI_REF("Registration"),
    .responses =
        (const struct openapi_response[]){
            OPENAPI_ANSWER(201, "The new user.", OPENAPI_REF("User")),
            OPENAPI_ERROR(400, "The body is not a JSON object."),
            OPENAPI_ERROR(409, "The email is registered already (code `conflict`)."),
            OPENAPI_ERROR(422, "Invalid fields (code `invalid`, with `fields`)."),
            OPENAPI_ERROR(503, "Too many password hashes in progress, the outbox backlog is past "
                               "its threshold, or the service is stopping (`Retry-After`)."),
            OPENAPI_END},
};

static const struct openapi_route doc_token = {
    .summary = "Trade an email and a password for a token",
    .description = "Public. The token is valid for an hour; an unknown email costs the same "
                   "hash as a known one.",
    .request = OPENAPI_REF("Credentials"),
    .responses =
        (const struct openapi_response[]){
            OPENAPI_ANSWER(200, "A bearer token.", OPENAPI_REF("Token")),
            OPENAPI_ERROR(400, "The body is not a JSON object."),
            OPENAPI_ERROR(401, "Invalid email or password."),
            OPENAPI_ERROR(422, "email or password is missing or not a string."),
            OPENAPI_ERROR(503, "Too many password checks in progress, or the service is stopping."),
            OPENAPI_END},
};

static const struct openapi_route doc_get_user = {
    .summary = "Read a user",
    .description = "The user themself or a service token.",
    .params = (const struct openapi_param[]){OPENAPI_PATH("id", "The user's id.", OPENAPI_UUID),
                                             OPENAPI_END_PARAMS},
    .responses =
        (const struct openapi_response[]){
            OPENAPI_ANSWER(200, "The user.", OPENAPI_REF("User")),
            OPENAPI_ERROR(403, "Another user's record."),
            OPENAPI_ERROR(404, "No such user, or not a UUID (code `user_not_found`)."),
            OPENAPI_END},
};

int users_service_start(struct service *svc)
{
    /* Checked before the database is touched: a bad setting is one line. */
    unsigned long iterations = service_setting_uint(svc, "PBKDF2_ITERATIONS", USERS_ITER_DEFAULT,
                                                    USERS_ITER_MIN, USERS_ITER_MAX);
    struct users *u;
    int rc;

    service_open_store(svc);
    u = calloc(1, sizeof(*u));
    if (u == NULL)
        return -ENOMEM;
    u->svc = svc;
    u->iterations = iterations;
    rc = prepare_statements(u);
    if (rc < 0) {
        free(u);
        return rc;
    }
    service_openapi(svc, "Users: registration, passwords and tokens.", users_schemas);
    service_route_doc(svc, "POST", "/api/v1/users", HTTP_ROUTE_PUBLIC, &doc_register, on_register,
                      u);
    service_route_doc(svc, "POST", "/api/v1/auth/token", HTTP_ROUTE_PUBLIC, &doc_token, on_token,
                      u);
    service_route_doc(svc, "GET", "/api/v1/users/{id}", 0, &doc_get_user, on_get_user, u);
    service_on_stop(svc, on_stop, u);
    return users_events_start(svc);
}

MODULE_DEFINE(users, 8001, users_schema_sql, users_emits, users_consumes, users_service_start);
