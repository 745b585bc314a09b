/* http_reply.h -- JSON answers and the error shape of DESIGN.md §4.
 *
 * Every error is {"error":{"code":"<snake_case>","message":"..."}}, and a
 * 422 also carries "fields": {"<field>": "<what is wrong>"}. The
 * http_reply_* functions answer a request (consuming it, like
 * http_respond); http_error_body builds the body alone, for tests and for
 * callers that need the text. */
#ifndef RIPPLE_HTTP_REPLY_H
#define RIPPLE_HTTP_REPLY_H

#include <stddef.h>

#include <ripple/common.h>
#include <ripple/ids.h>

struct http_request;
struct json_t;

/* The code word DESIGN.md §4 uses for status: 400 "bad_request", 401
 * "unauthorized", 403 "forbidden", 404 "not_found", 405
 * "method_not_allowed", 409 "conflict", 413 "payload_too_large", 422
 * "invalid", 431 "headers_too_large", 503 "unavailable", ... */
const char *http_error_code(int status);

/* Builds the error body; fields (borrowed, may be NULL) is a JSON object of
 * per-field messages. Returns a new string (free() it) and its length in
 * *len, or NULL on ENOMEM. */
char *http_error_body(const char *code, const char *message, const struct json_t *fields,
                      size_t *len);

/* Answers with status and body serialized compactly. Steals body. */
int http_reply_json(struct http_request *req, int status, struct json_t *body);
/* Answers with status and body, JSON text already written (json_out.h). */
int http_reply_json_text(struct http_request *req, int status, const char *body, size_t len);
/* Answers with the error shape; code NULL means http_error_code(status). */
int http_reply_error(struct http_request *req, int status, const char *code, const char *message);
/* Answers 422 "invalid" with fields (stolen; an object of field -> message). */
int http_reply_invalid(struct http_request *req, struct json_t *fields);

/* Answers 500 "internal error" (the cause is logged where it happened). */
int http_reply_internal(struct http_request *req);

/* The route param name as a UUID in canonical lower case in out. Returns 0,
 * or -EINVAL when it is absent or no UUID (a path id that is no UUID names
 * no resource: answer 404). */
CORE_MUST_CHECK int http_param_uuid(const struct http_request *req, const char *name,
                                    char out[IDS_UUID_LEN + 1]);

/* Lists (DESIGN.md §4): ?limit=1..100 (default 20) and ?after=<the "next"
 * of the previous page, an opaque positive integer cursor>. */
#define HTTP_PAGE_DEFAULT 20
#define HTTP_PAGE_MAX 100
struct http_page {
    unsigned limit;
    long long after; /* the cursor; 0 when the first page is asked for */
};

/* Reads limit and after into p; each bad one is recorded in fields (a JSON
 * object for http_reply_invalid) with its 422 message. */
void http_page_query(const struct http_request *req, struct http_page *p, struct json_t *fields);

/* Reads query parameter name as a UUID in canonical lower case into out
 * (out[0] = '\0' when absent); a bad one is recorded in fields. */
void http_query_uuid(const struct http_request *req, const char *name, char out[IDS_UUID_LEN + 1],
                     struct json_t *fields);

/* Answers 200 {"items": items, "next": "<next>" | null}: next > 0 is the
 * cursor of the following page. Steals items. */
int http_reply_page(struct http_request *req, struct json_t *items, long long next);

/* Parses req's body as one JSON object (duplicate keys rejected). Returns 0
 * and a new reference in *out; or answers 400 with a message saying what is
 * wrong, consuming req, and returns -EINVAL. */
CORE_MUST_CHECK int http_reply_parse_object(struct http_request *req, struct json_t **out);

#endif
