/* replay.c -- POST /api/v1/console/streams/{stream}/dlq/{id}/replay.
 *
 * Replays one dead letter with scripts/dlq.d/replay.lua, the script that
 * `scripts/dlq replay` runs, embedded at build time: the original fields go
 * back to <stream> under a new entry id and the dead letter is deleted, in
 * one atomic step on the server. Allowed only when CONSOLE_ALLOW_WRITES=1
 * and the request carries a service token (role "service"); otherwise 403
 * (a missing or bad token is the dispatcher's 401). Every replay is logged
 * with the token's subject. */
#include "console.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <hiredis/hiredis.h>
#include <jansson.h>

#include <ripple/auth.h>
#include <ripple/http_reply.h>
#include <ripple/http_server.h>
#include <ripple/log.h>
#include <ripple/redis.h>
#include <ripple/service.h>
#include <ripple/streams.h>

/* One replay in flight. */
struct replay {
    struct console *c;
    struct http_request *req;
    char stream[CONSOLE_STREAM_MAX + 1];
    char dlq[CONSOLE_STREAM_MAX + sizeof(STREAMS_DLQ_SUFFIX)];
    char id[CONSOLE_ENTRY_ID_MAX];
    char sub[AUTH_MAX_SUB];
};

static void replay_answer(struct replay *rp, const redisReply *reply)
{
    struct http_request *req = rp->req;
    json_t *body;

    if (reply == NULL) {
        http_reply_error(req, 503, NULL, "Redis is unavailable");
    } else if (reply->type == REDIS_REPLY_ERROR && strncmp(reply->str, "NOENTRY", 7) == 0) {
        http_reply_error(req, 404, NULL, "no such dead letter (replayed already?)");
    } else if (reply->type == REDIS_REPLY_ERROR && strncmp(reply->str, "EMPTY", 5) == 0) {
        http_reply_error(req, 409, NULL, "the dead letter has no original fields to replay");
    } else if (reply->type != REDIS_REPLY_STRING) {
        log_warn("console: replay of %s %s failed: %s", rp->dlq, rp->id,
                 reply->type == REDIS_REPLY_ERROR ? reply->str : "unexpected answer");
        http_reply_error(req, 502, NULL, "Redis refused the replay");
    } else {
        log_info("console: %s replayed %s %s -> %s %.*s", rp->sub, rp->dlq, rp->id, rp->stream,
                 (int)reply->len, reply->str);
        body = json_pack("{s:s, s:s, s:s, s:s#}", "stream", rp->stream, "dlq", rp->dlq, "dlq_id",
                         rp->id, "new_id", reply->str, (int)reply->len);
        if (body == NULL)
            http_reply_error(req, 500, NULL, "out of memory");
        else
            http_reply_json(req, 200, body);
    }
}

static void on_replayed(struct redis *r, redisReply *reply, void *data)
{
    struct replay *rp = data;
    struct console *c = rp->c;

    (void)r;
    log_scope(c->svc->module->name);
    replay_answer(rp, reply);
    /* The next stream report shows the replay. */
    c->streams_at = 0;
    free(rp);
    c->inflight--;
    console_maybe_stopped(c);
}

/* Checks the request; answers it and returns -EPERM/-EINVAL when refused.
 * *len gets the length of the stream's name without a .dlq suffix. */
static int replay_check(struct console *c, struct http_request *req, const struct auth_claims *who,
                        const char *stream, const char *id, size_t *out_len)
{
    size_t sfx = strlen(STREAMS_DLQ_SUFFIX), len = stream ? strlen(stream) : 0;

    if (!c->allow_writes) {
        http_reply_error(req, 403, NULL,
                         "the console is read-only (CONSOLE_ALLOW_WRITES=1 allows replay)");
        return -EPERM;
    }
    if (!who->is_service) {
        http_reply_error(req, 403, NULL, "replaying a dead letter needs a service token");
        return -EPERM;
    }
    if (len > sfx && strcmp(stream + len - sfx, STREAMS_DLQ_SUFFIX) == 0)
        len -= sfx;
    if (!console_stream_ok(stream, len) || id == NULL || !console_entry_id_ok(id)) {
        http_reply_error(req, 400, NULL,
                         "expected /api/v1/console/streams/<stream>/dlq/<entry id>/replay");
        return -EINVAL;
    }
    *out_len = len;
    return 0;
}

static int replay_send(struct replay *rp)
{
    const char *argv[] = {"EVAL", NULL, "2", rp->stream, rp->dlq, rp->id};
    size_t lens[ARRAY_SIZE(argv)];
    const struct console_asset *a = console_asset_find("replay.lua");

    if (a == NULL)
        return -ENOENT;
    argv[1] = (const char *)a->data;
    for (size_t i = 0; i < ARRAY_SIZE(argv); i++)
        lens[i] = i == 1 ? a->len : strlen(argv[i]);
    return redis_command(rp->c->svc->redis, on_replayed, rp, (int)ARRAY_SIZE(argv), argv, lens);
}

static void on_replay(struct http_request *req, const struct auth_claims *who, void *data)
{
    struct console *c = data;
    const char *stream = http_request_param(req, "stream");
    const char *id = http_request_param(req, "id");
    struct replay *rp;
    size_t len;

    if (c->stopping) {
        http_reply_error(req, 503, NULL, "the console is stopping");
        return;
    }
    if (replay_check(c, req, who, stream, id, &len) < 0)
        return;
    rp = calloc(1, sizeof(*rp));
    if (rp == NULL) {
        http_reply_error(req, 500, NULL, "out of memory");
        return;
    }
    *rp = (struct replay){.c = c, .req = req};
    memcpy(rp->stream, stream, len);
    snprintf(rp->id, sizeof(rp->id), "%s", id);
    snprintf(rp->sub, sizeof(rp->sub), "%s", who->sub);
    if (streams_dlq_name(rp->stream, rp->dlq, sizeof(rp->dlq)) < 0 || replay_send(rp) < 0) {
        free(rp);
        http_reply_error(req, 503, NULL, "Redis is unavailable");
        return;
    }
    c->inflight++;
}

static const struct openapi_route doc_replay = {
    .summary = "Replay one dead letter onto its stream",
    .description = "The original fields go back to the stream under a new entry id and the dead "
                   "letter is deleted, in one atomic step on Redis. Needs "
                   "`CONSOLE_ALLOW_WRITES=1` and a service token.",
    .params =
        (const struct openapi_param[]){
            OPENAPI_PATH("stream", "The stream (with or without its .dlq suffix).", NULL),
            OPENAPI_PATH("id", "The dead letter's entry id.",
                         "{\"type\":\"string\",\"pattern\":\"^[0-9]+-[0-9]+$\"}"),
            OPENAPI_END_PARAMS},
    .responses =
        (const struct openapi_response[]){
            OPENAPI_ANSWER(200, "Replayed.",
                           "{\"type\":\"object\",\"required\":[\"stream\",\"dlq\",\"dlq_id\","
                           "\"new_id\"],\"additionalProperties\":false,\"properties\":{"
                           "\"stream\":{\"type\":\"string\"},\"dlq\":{\"type\":\"string\"},"
                           "\"dlq_id\":{\"type\":\"string\"},\"new_id\":{\"type\":\"string\"}}}"),
            OPENAPI_ERROR(400, "Not a stream name or an entry id."),
            OPENAPI_ERROR(403, "The console is read-only, or the token is not a service token."),
            OPENAPI_ERROR(404, "No such dead letter (replayed already?)."),
            OPENAPI_ERROR(409, "The dead letter has no original fields to replay."),
            OPENAPI_ERROR(502, "Redis refused the replay."),
            OPENAPI_ERROR(503, "Redis is unavailable, or the console is stopping."), OPENAPI_END},
};

void console_replay_routes(struct console *c)
{
    service_route_doc(c->svc, "POST", "/api/v1/console/streams/{stream}/dlq/{id}/replay", 0,
                      &doc_replay, on_replay, c);
}
