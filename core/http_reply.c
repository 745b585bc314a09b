/* http_reply.c -- JSON answers and the error shape. See http_reply.h. */
#include <ripple/http_reply.h>

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include <ripple/http_server.h>
#include <ripple/ids.h>
#include <ripple/json_out.h>

/* A JSON answer is written on the stack up to this size, by json_dumps past it. */
#define HTTP_REPLY_JSON_STACK 8192

static const char content_json[] = "application/json";

const char *http_error_code(int status)
{
    switch (status) {
    case 400:
        return "bad_request";
    case 401:
        return "unauthorized";
    case 403:
        return "forbidden";
    case 404:
        return "not_found";
    case 405:
        return "method_not_allowed";
    case 408:
        return "request_timeout";
    case 409:
        return "conflict";
    case 413:
        return "payload_too_large";
    case 415:
        return "unsupported_media_type";
    case 422:
        return "invalid";
    case 429:
        return "too_many_requests";
    case 431:
        return "headers_too_large";
    case 502:
        return "bad_gateway";
    case 503:
        return "unavailable";
    case 504:
        return "timeout";
    default:
        return status >= 500 ? "internal" : "error";
    }
}

char *http_error_body(const char *code, const char *message, const json_t *fields, size_t *len)
{
    json_t *err, *root;
    char *s;

    err = json_pack("{s:s, s:s}", "code", code, "message", message);
    if (err == NULL)
        return NULL;
    if (fields != NULL && json_object_set(err, "fields", (json_t *)fields) < 0) {
        json_decref(err);
        return NULL;
    }
    root = json_pack("{s:o}", "error", err); /* steals err */
    if (root == NULL)
        return NULL;
    s = json_dumps(root, JSON_COMPACT);
    json_decref(root);
    if (s != NULL)
        *len = strlen(s);
    return s;
}

int http_reply_json(struct http_request *req, int status, json_t *body)
{
    char buf[HTTP_REPLY_JSON_STACK];
    size_t len = 0;
    char *s = body ? json_out_dump(body, buf, sizeof(buf), &len) : NULL;
    int rc;

    json_decref(body);
    if (s == NULL)
        return http_reply_error(req, 500, NULL, "could not encode the response");
    rc = http_respond(req, status, content_json, s, len);
    if (s != buf)
        free(s);
    return rc;
}

int http_reply_json_text(struct http_request *req, int status, const char *body, size_t len)
{
    return http_respond(req, status, content_json, body, len);
}

/* Answers status with a body built without allocating, for when even the
 * error could not be encoded. */
static int reply_fallback(struct http_request *req, int status)
{
    static const char body[] = "{\"error\":{\"code\":\"internal\",\"message\":\"out of memory\"}}";

    return http_respond(req, status >= 500 ? status : 500, content_json, body, sizeof(body) - 1);
}

static int reply_error_fields(struct http_request *req, int status, const char *code,
                              const char *message, json_t *fields)
{
    size_t len;
    char *s = http_error_body(code ? code : http_error_code(status), message, fields, &len);
    int rc;

    json_decref(fields);
    if (s == NULL)
        return reply_fallback(req, status);
    rc = http_respond(req, status, content_json, s, len);
    free(s);
    return rc;
}

int http_reply_error(struct http_request *req, int status, const char *code, const char *message)
{
    return reply_error_fields(req, status, code, message, NULL);
}

int http_reply_invalid(struct http_request *req, json_t *fields)
{
    return reply_error_fields(req, 422, "invalid", "the request has invalid fields", fields);
}

int http_reply_parse_object(struct http_request *req, json_t **out)
{
    json_error_t jerr;
    char msg[200];
    json_t *v;

    if (req->body_len == 0) {
        http_reply_error(req, 400, NULL, "the request body must be a JSON object");
        return -EINVAL;
    }
    v = json_loadb(req->body, req->body_len, JSON_REJECT_DUPLICATES, &jerr);
    if (v == NULL) {
        snprintf(msg, sizeof(msg), "invalid JSON at line %d column %d: %s", jerr.line, jerr.column,
                 jerr.text);
        http_reply_error(req, 400, NULL, msg);
        return -EINVAL;
    }
    if (!json_is_object(v)) {
        json_decref(v);
        http_reply_error(req, 400, NULL, "the request body must be a JSON object");
        return -EINVAL;
    }
    *out = v;
    return 0;
}

/* ---------------------------------------------------------------------------
 * Shapes every service answers with: 500, path ids, pages
 * ------------------------------------------------------------------------- */

int http_reply_internal(struct http_request *req)
{
    return http_reply_error(req, 500, NULL, "internal error");
}

int http_param_uuid(const struct http_request *req, const char *name, char out[IDS_UUID_LEN + 1])
{
    const char *s = http_request_param(req, name);

    return s != NULL && ids_canonical(s, strlen(s), out) == 0 ? 0 : -EINVAL;
}

/* A decimal integer in [min, max], digits only. Returns 0 or -EINVAL. */
static int parse_decimal(const char *s, long long min, long long max, long long *out)
{
    long long v = 0;

    if (*s == '\0' || strlen(s) > 19)
        return -EINVAL;
    for (; *s != '\0'; s++) {
        if (*s < '0' || *s > '9' || v > (LLONG_MAX - (*s - '0')) / 10)
            return -EINVAL;
        v = v * 10 + (*s - '0');
    }
    if (v < min || v > max)
        return -EINVAL;
    *out = v;
    return 0;
}

static void problem(json_t *fields, const char *name, const char *message)
{
    if (fields != NULL && json_object_get(fields, name) == NULL)
        json_object_set_new(fields, name, json_string(message));
}

void http_page_query(const struct http_request *req, struct http_page *p, json_t *fields)
{
    char buf[32];
    long long v;
    int n;

    p->limit = HTTP_PAGE_DEFAULT;
    p->after = 0;
    n = http_request_query(req, "limit", buf, sizeof(buf));
    if (n != -ENOENT && (n < 0 || parse_decimal(buf, 1, HTTP_PAGE_MAX, &v) < 0))
        problem(fields, "limit", "must be an integer from 1 to 100");
    else if (n != -ENOENT)
        p->limit = (unsigned)v;
    n = http_request_query(req, "after", buf, sizeof(buf));
    if (n != -ENOENT && (n < 0 || parse_decimal(buf, 1, LLONG_MAX, &v) < 0))
        problem(fields, "after", "must be the \"next\" of a previous page");
    else if (n != -ENOENT)
        p->after = v;
}

void http_query_uuid(const struct http_request *req, const char *name, char out[IDS_UUID_LEN + 1],
                     json_t *fields)
{
    char buf[64];
    int n = http_request_query(req, name, buf, sizeof(buf));

    out[0] = '\0';
    if (n != -ENOENT && (n < 0 || ids_canonical(buf, (size_t)n, out) < 0)) {
        out[0] = '\0';
        problem(fields, name, "must be a UUID");
    }
}

int http_reply_page(struct http_request *req, json_t *items, long long next)
{
    char cursor[24];
    json_t *page;

    snprintf(cursor, sizeof(cursor), "%lld", next);
    page = json_pack("{s:o, s:o}", "items", items, "next",
                     next > 0 ? json_string(cursor) : json_null());
    if (page == NULL)
        return http_reply_internal(req);
    return http_reply_json(req, 200, page);
}
