/* openapi.c -- the OpenAPI 3.1 document of a router's routes. See openapi.h.
 *
 * Walks the routes in the order they were added; each one's struct
 * openapi_route becomes an operation under paths[pattern][method]. The
 * JSON Schema fragments are parsed here (jansson, duplicates rejected), and
 * every problem found is a -EINVAL with one line naming the route: the
 * document is built once, at start, so a wrong fragment stops the service
 * before it listens. The result is a new json_t the caller serializes. */
#include <ripple/openapi.h>

#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include <jansson.h>

#include <ripple/http_router.h>

#define OPENAPI_VERSION "3.1.0"
#define SCHEME "bearer" /* the name of the security scheme in components */
#define RUNTIME_TAG "runtime"

/* The error shape of DESIGN.md §4. */
static const char error_schema[] =
    "{\"type\":\"object\",\"required\":[\"error\"],\"additionalProperties\":false,"
    "\"description\":\"Every answer with a status of 400 or more.\","
    "\"properties\":{\"error\":{\"type\":\"object\",\"required\":[\"code\",\"message\"],"
    "\"additionalProperties\":false,\"properties\":{"
    "\"code\":{\"type\":\"string\",\"pattern\":\"^[a-z][a-z0-9_]*$\","
    "\"description\":\"A snake_case word: bad_request, unauthorized, forbidden, not_found, "
    "method_not_allowed, conflict, invalid, payload_too_large, headers_too_large, unavailable, "
    "...\"},"
    "\"message\":{\"type\":\"string\",\"description\":\"For people: what went wrong.\"},"
    "\"fields\":{\"type\":\"object\",\"additionalProperties\":{\"type\":\"string\"},"
    "\"description\":\"422 only: the problem with each invalid field, by name.\"}}}}}";

/* What building needs at hand: the document's parts and the error line. */
struct build {
    json_t *doc, *paths, *schemas, *tags_seen;
    const struct openapi_info *info;
    char *err;
    size_t errlen;
    const struct http_route *rt; /* the route being built, for messages */
};

static int fail(struct build *b, const char *fmt, ...) CORE_PRINTF(2, 3);

static int fail(struct build *b, const char *fmt, ...)
{
    char what[256];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(what, sizeof(what), fmt, ap);
    va_end(ap);
    if (b->rt != NULL)
        snprintf(b->err, b->errlen, "openapi: route %s %s: %s", b->rt->method, b->rt->pattern,
                 what);
    else
        snprintf(b->err, b->errlen, "openapi: %s", what);
    return -EINVAL;
}

/* Parses a JSON Schema fragment. Returns a new object, or NULL after
 * fail() (what names the fragment). */
static json_t *parse_schema(struct build *b, const char *text, const char *what)
{
    json_error_t jerr;
    json_t *v = json_loads(text, JSON_REJECT_DUPLICATES, &jerr);

    if (v == NULL) {
        fail(b, "%s: not JSON (%s at column %d)", what, jerr.text, jerr.column);
        return NULL;
    }
    if (!json_is_object(v)) {
        json_decref(v);
        fail(b, "%s: a schema must be a JSON object", what);
        return NULL;
    }
    return v;
}

/* Checks every "$ref" in v names a schema of the document. */
static int check_refs(struct build *b, const json_t *v, const char *what)
{
    static const char prefix[] = "#/components/schemas/";
    const char *key;
    json_t *item;
    size_t i;

    if (json_is_array(v)) {
        json_array_foreach(v, i, item)
        {
            if (check_refs(b, item, what) < 0)
                return -EINVAL;
        }
        return 0;
    }
    if (!json_is_object(v))
        return 0;
    json_object_foreach((json_t *)v, key, item)
    {
        const char *ref = json_string_value(item);

        if (strcmp(key, "$ref") == 0 &&
            (ref == NULL || strncmp(ref, prefix, sizeof(prefix) - 1) != 0 ||
             json_object_get(b->schemas, ref + sizeof(prefix) - 1) == NULL))
            return fail(b, "%s: $ref %s names no schema of the document", what,
                        ref ? ref : "(not a string)");
        if (check_refs(b, item, what) < 0)
            return -EINVAL;
    }
    return 0;
}

/* A schema fragment, parsed and its refs checked; NULL text is def. */
static json_t *schema_of(struct build *b, const char *text, const char *def, const char *what)
{
    json_t *v = parse_schema(b, text != NULL ? text : def, what);

    if (v != NULL && check_refs(b, v, what) < 0) {
        json_decref(v);
        return NULL;
    }
    return v;
}

/* ---------------------------------------------------------------------------
 * Parameters
 * ------------------------------------------------------------------------- */

/* Whether pattern has the segment {name}. */
static int pattern_has(const char *pattern, const char *name)
{
    size_t n = strlen(name);

    for (const char *p = strchr(pattern, '{'); p != NULL; p = strchr(p + 1, '{'))
        if (strncmp(p + 1, name, n) == 0 && p[1 + n] == '}')
            return 1;
    return 0;
}

static int param_documented(const struct openapi_route *doc, const char *name, size_t len)
{
    for (const struct openapi_param *p = doc ? doc->params : NULL; p && p->name; p++)
        if (strcmp(p->in, "path") == 0 && strlen(p->name) == len && !strncmp(p->name, name, len))
            return 1;
    return 0;
}

static int add_param(struct build *b, json_t *list, const struct openapi_param *p)
{
    int in_path = strcmp(p->in, "path") == 0;
    json_t *schema, *v;

    if (!in_path && strcmp(p->in, "query") != 0 && strcmp(p->in, "header") != 0)
        return fail(b, "parameter %s: in must be path, query or header", p->name);
    if (in_path && !pattern_has(b->rt->pattern, p->name))
        return fail(b, "parameter %s: the pattern has no {%s}", p->name, p->name);
    schema = schema_of(b, p->schema, OPENAPI_STRING, p->name);
    if (schema == NULL)
        return -EINVAL;
    v = json_pack("{s:s, s:s, s:b, s:o}", "name", p->name, "in", p->in, "required",
                  in_path || p->required, "schema", schema);
    if (v != NULL && p->description != NULL)
        json_object_set_new(v, "description", json_string(p->description));
    return json_array_append_new(list, v) < 0 ? -ENOMEM : 0;
}

/* The parameters of the route: its documented ones, then every {name} of
 * the pattern left undocumented, as a string. */
static int params_of(struct build *b, const struct openapi_route *doc, json_t *op)
{
    json_t *list = json_array();
    const char *p = b->rt->pattern;

    if (list == NULL || json_object_set_new(op, "parameters", list) < 0)
        return -ENOMEM;
    for (const struct openapi_param *d = doc ? doc->params : NULL; d && d->name; d++)
        if (add_param(b, list, d) < 0)
            return -EINVAL;
    while ((p = strchr(p, '{')) != NULL) {
        const char *end = strchr(p, '}');
        char name[64];
        struct openapi_param auto_param = OPENAPI_PATH(name, NULL, NULL);

        if (end == NULL || (size_t)(end - p) > sizeof(name))
            return fail(b, "a path parameter's name is too long");
        if (!param_documented(doc, p + 1, (size_t)(end - p - 1))) {
            memcpy(name, p + 1, (size_t)(end - p - 1));
            name[end - p - 1] = '\0';
            if (add_param(b, list, &auto_param) < 0)
                return -EINVAL;
        }
        p = end;
    }
    if (json_array_size(list) == 0)
        json_object_del(op, "parameters");
    return 0;
}

/* ---------------------------------------------------------------------------
 * Bodies and answers
 * ------------------------------------------------------------------------- */

/* {content: {type: {schema}}} added to obj, with schema (stolen). */
static int set_content(json_t *obj, const char *type, json_t *schema)
{
    json_t *content = json_pack("{s:{s:o}}", type, "schema", schema);

    return json_object_set_new(obj, "content", content) < 0 ? -ENOMEM : 0;
}

static int add_response(struct build *b, json_t *responses, const struct openapi_response *r)
{
    char status[8], what[32];
    json_t *v, *schema;

    if (r->status < 100 || r->status > 599 || r->description == NULL)
        return fail(b, "response %d: a status from 100 to 599 and a description are required",
                    r->status);
    snprintf(status, sizeof(status), "%d", r->status);
    snprintf(what, sizeof(what), "response %d", r->status);
    if (json_object_get(responses, status) != NULL)
        return fail(b, "response %d: documented twice", r->status);
    schema = schema_of(b, r->schema, OPENAPI_REF(OPENAPI_ERROR_SCHEMA), what);
    if (schema == NULL)
        return -EINVAL;
    v = json_pack("{s:s}", "description", r->description);
    if (v == NULL ||
        set_content(v, r->content_type ? r->content_type : "application/json", schema) < 0) {
        json_decref(v);
        return -ENOMEM;
    }
    return json_object_set_new(responses, status, v) < 0 ? -ENOMEM : 0;
}

/* An error answer every operation may give besides its documented ones. */
static int add_error(json_t *responses, const char *status, const char *description)
{
    json_t *v;

    if (json_object_get(responses, status) != NULL)
        return 0;
    v = json_pack("{s:s}", "description", description);
    if (v == NULL ||
        set_content(v, "application/json",
                    json_pack("{s:s}", "$ref", "#/components/schemas/" OPENAPI_ERROR_SCHEMA)) < 0) {
        json_decref(v);
        return -ENOMEM;
    }
    return json_object_set_new(responses, status, v) < 0 ? -ENOMEM : 0;
}

static int responses_of(struct build *b, const struct openapi_route *doc, json_t *op)
{
    json_t *responses = json_object();
    int rc = 0;

    if (responses == NULL || json_object_set_new(op, "responses", responses) < 0)
        return -ENOMEM;
    if (doc != NULL && (doc->responses == NULL || doc->responses[0].status == 0))
        return fail(b, "no response documented");
    for (const struct openapi_response *r = doc ? doc->responses : NULL; r && r->status; r++)
        if (add_response(b, responses, r) < 0)
            return -EINVAL;
    if (!(b->rt->flags & HTTP_ROUTE_PUBLIC))
        rc = add_error(responses, "401",
                       "No valid bearer token (missing, malformed, badly signed or expired).");
    if (rc == 0)
        rc = add_error(responses, "4XX",
                       "Any other client error, in the error shape: a malformed or oversized "
                       "request (400, 413, 431), a method the path does not take (405).");
    if (rc == 0)
        rc = add_error(responses, "default",
                       "Any other error, in the error shape: the service stopping or "
                       "overloaded (503), an internal error (500).");
    return rc;
}

static int request_of(struct build *b, const struct openapi_route *doc, json_t *op)
{
    json_t *body, *schema;

    if (doc == NULL || doc->request == NULL)
        return 0;
    schema = schema_of(b, doc->request, NULL, "request body");
    if (schema == NULL)
        return -EINVAL;
    body = json_pack("{s:b}", "required", !doc->request_optional);
    if (body == NULL || set_content(body, "application/json", schema) < 0) {
        json_decref(body);
        return -ENOMEM;
    }
    return json_object_set_new(op, "requestBody", body) < 0 ? -ENOMEM : 0;
}

/* ---------------------------------------------------------------------------
 * Operations
 * ------------------------------------------------------------------------- */

static char lower(char ch)
{
    return (char)tolower((unsigned char)ch);
}

/* A character of an operation id: letters and digits as they are, '_'
 * for the rest. */
static char id_char(char ch)
{
    if (isalnum((unsigned char)ch))
        return ch;
    return '_';
}

/* "get_api_v1_users_id" from GET /api/v1/users/{id}: unique per route. */
static void operation_id(const struct http_route *rt, char *buf, size_t len)
{
    size_t n = 0;

    for (const char *m = rt->method; *m && n + 1 < len; m++)
        buf[n++] = lower(*m);
    for (const char *p = rt->pattern; *p && n + 1 < len; p++)
        if (*p != '{' && *p != '}')
            buf[n++] = id_char(*p);
    buf[n] = '\0';
}

/* The operation object of route b->rt. Returns a new object or NULL after
 * fail() (or on ENOMEM, with err saying so). */
static json_t *operation_of(struct build *b)
{
    const struct openapi_route *doc = b->rt->doc;
    const char *tag = doc && doc->tag ? doc->tag : b->info->title;
    char id[160], summary[200];
    json_t *op;

    if (doc != NULL && (doc->summary == NULL || doc->summary[0] == '\0')) {
        fail(b, "a summary is required");
        return NULL;
    }
    operation_id(b->rt, id, sizeof(id));
    snprintf(summary, sizeof(summary), "%s %s (undocumented)", b->rt->method, b->rt->pattern);
    op = json_pack("{s:s, s:s, s:[s]}", "operationId", id, "summary", doc ? doc->summary : summary,
                   "tags", tag);
    if (op == NULL) {
        fail(b, "out of memory");
        return NULL;
    }
    if (doc != NULL && doc->description != NULL)
        json_object_set_new(op, "description", json_string(doc->description));
    if (doc == NULL)
        json_object_set_new(op, "x-ripple-undocumented", json_true());
    if (b->rt->flags & HTTP_ROUTE_PUBLIC)
        json_object_set_new(op, "security", json_array()); /* none: no token needed */
    json_object_set_new(b->tags_seen, tag, json_true());
    if (params_of(b, doc, op) < 0 || request_of(b, doc, op) < 0 || responses_of(b, doc, op) < 0) {
        json_decref(op);
        return NULL;
    }
    return op;
}

static int add_route(struct build *b)
{
    char method[16];
    json_t *item = json_object_get(b->paths, b->rt->pattern), *op;
    size_t i;

    for (i = 0; b->rt->method[i] && i + 1 < sizeof(method); i++)
        method[i] = lower(b->rt->method[i]);
    method[i] = '\0';
    if (item == NULL) {
        item = json_object();
        if (json_object_set_new(b->paths, b->rt->pattern, item) < 0)
            return fail(b, "out of memory");
    }
    if (json_object_get(item, method) != NULL)
        return fail(b, "routed twice");
    op = operation_of(b);
    if (op == NULL)
        return -EINVAL;
    return json_object_set_new(item, method, op) < 0 ? fail(b, "out of memory") : 0;
}

/* ---------------------------------------------------------------------------
 * The document
 * ------------------------------------------------------------------------- */

static int add_schemas(struct build *b)
{
    json_t *v = parse_schema(b, error_schema, OPENAPI_ERROR_SCHEMA);

    if (v == NULL || json_object_set_new(b->schemas, OPENAPI_ERROR_SCHEMA, v) < 0)
        return -EINVAL;
    for (const struct openapi_schema *s = b->info->schemas; s && s->name; s++) {
        if (json_object_get(b->schemas, s->name) != NULL)
            return fail(b, "schema %s: declared twice", s->name);
        v = parse_schema(b, s->schema, s->name);
        if (v == NULL || json_object_set_new(b->schemas, s->name, v) < 0)
            return -EINVAL;
    }
    /* once all are in: a schema may name another declared after it */
    for (const struct openapi_schema *s = b->info->schemas; s && s->name; s++)
        if (check_refs(b, json_object_get(b->schemas, s->name), s->name) < 0)
            return -EINVAL;
    return 0;
}

static const char *tag_description(const struct build *b, const char *name)
{
    if (strcmp(name, RUNTIME_TAG) == 0)
        return "What every ripple service serves: liveness, readiness, metrics and this document.";
    if (strcmp(name, b->info->title) == 0 && b->info->description != NULL)
        return b->info->description;
    return "Routes of this service.";
}

/* The tags the operations use, each described: the module's own first (a
 * renderer lists them in this order), the runtime's last. */
static json_t *tags_of(const struct build *b)
{
    json_t *tags = json_array();
    const char *name;
    json_t *v;

    for (int pass = 0; pass < 3; pass++) {
        json_object_foreach(b->tags_seen, name, v)
        {
            int which = strcmp(name, b->info->title) == 0 ? 0 : strcmp(name, RUNTIME_TAG) ? 1 : 2;

            if (which == pass)
                json_array_append_new(tags, json_pack("{s:s, s:s}", "name", name, "description",
                                                      tag_description(b, name)));
        }
    }
    return tags;
}

static json_t *skeleton(struct build *b)
{
    return json_pack(
        "{s:s, s:{s:s, s:s, s:s}, s:[{s:s, s:s}], s:[{s:[]}], s:o, "
        "s:{s:{s:{s:s, s:s, s:s, s:s}}, s:o}}",
        "openapi", OPENAPI_VERSION, "info", "title", b->info->title, "version", b->info->version,
        "description",
        b->info->description ? b->info->description : "A ripple service (DESIGN.md §4).", "servers",
        "url", "/", "description", "this service, where this document was read", "security", SCHEME,
        "paths", b->paths, "components", "securitySchemes", SCHEME, "type", "http", "scheme",
        "bearer", "bearerFormat", "JWT", "description",
        "An HS256 JWT with exp: a user's from POST /api/v1/auth/token (users), or a service "
        "token (role \"service\") signed with the shared JWT_SECRET.",
        "schemas", b->schemas);
}

int openapi_build(const struct http_router *r, const struct openapi_info *info, json_t **out,
                  char *err, size_t errlen)
{
    struct build b = {.info = info, .err = err, .errlen = errlen};
    const struct http_route *rt;
    int rc = -ENOMEM;

    b.paths = json_object();
    b.schemas = json_object();
    b.tags_seen = json_object();
    if (b.paths == NULL || b.schemas == NULL || b.tags_seen == NULL)
        goto out_free;
    rc = add_schemas(&b);
    for (size_t i = 0; rc == 0 && (rt = http_router_route(r, i)) != NULL; i++) {
        b.rt = rt;
        rc = add_route(&b);
    }
    b.rt = NULL;
    if (rc < 0)
        goto out_free;
    b.doc = skeleton(&b); /* steals paths and schemas, even on failure */
    b.paths = b.schemas = NULL;
    if (b.doc == NULL || json_object_set_new(b.doc, "tags", tags_of(&b)) < 0) {
        rc = fail(&b, "out of memory");
        json_decref(b.doc);
        goto out_free;
    }
    *out = b.doc;
out_free:
    if (rc == -ENOMEM)
        snprintf(err, errlen, "openapi: out of memory");
    json_decref(b.paths);
    json_decref(b.schemas);
    json_decref(b.tags_seen);
    return rc;
}

const struct openapi_asset *openapi_asset_find(const char *path)
{
    for (size_t i = 0; i < openapi_assets_count; i++)
        if (strcmp(openapi_assets[i].path, path) == 0)
            return &openapi_assets[i];
    return NULL;
}
