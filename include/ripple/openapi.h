/* openapi.h -- what a client needs to know of each route, declared beside it,
 * and the OpenAPI 3.1 document built from a router (DESIGN.md §4).
 *
 * A module describes a route with a static struct openapi_route passed to
 * service_route_doc() (ripple/service.h) next to the handler: a summary,
 * its parameters, the JSON Schema of its request body and of each answer.
 * Schemas are JSON Schema 2020-12 text (the dialect of OpenAPI 3.1) in
 * string literals, parsed with jansson when the document is built at start:
 * a fragment that is not a JSON object, a `$ref` to no component, a path
 * parameter the pattern does not have, or a route without a summary or an
 * answer stops the service with one line naming the route. Every service
 * serves the document of its own routes at GET /api/v1/openapi.json and a
 * page rendering it at GET /api/docs.
 *
 * A schema may say {"$ref": "#/components/schemas/<Name>"} for a schema the
 * module declares with service_openapi_schemas() or for the runtime's own:
 * OPENAPI_ERROR_SCHEMA, the error shape every answer >= 400 has
 * ({"error": {"code", "message", "fields"?}}). A response whose schema is
 * NULL is an error answer of that shape. A route added without a doc (plain
 * service_route) still appears in the document, marked
 * x-ripple-undocumented. Everything here is borrowed for the life of the
 * process: declare it static const. */
#ifndef RIPPLE_OPENAPI_H
#define RIPPLE_OPENAPI_H

#include <stddef.h>

#include <ripple/common.h>

struct json_t;
struct http_router;

/* The components the runtime declares in every document. */
#define OPENAPI_ERROR_SCHEMA "Error"
#define OPENAPI_REF(name) "{\"$ref\":\"#/components/schemas/" name "\"}"
/* A JSON string; a UUID (lower case when the service writes it). */
#define OPENAPI_STRING "{\"type\":\"string\"}"
#define OPENAPI_UUID "{\"type\":\"string\",\"format\":\"uuid\"}"
/* An ISO-8601 UTC time as clock_iso8601 writes it. */
#define OPENAPI_TIME "{\"type\":\"string\",\"format\":\"date-time\"}"

struct openapi_param {
    const char *name;        /* a path parameter's name is its {name} in the pattern */
    const char *in;          /* "path", "query" or "header" */
    const char *description; /* may be NULL */
    const char *schema;      /* JSON Schema text; NULL: a string */
    int required;            /* path parameters are required whatever this says */
};

struct openapi_response {
    int status;               /* 100..599 */
    const char *description;  /* required */
    const char *schema;       /* JSON Schema text of the body; NULL: OPENAPI_ERROR_SCHEMA */
    const char *content_type; /* NULL: application/json */
};

struct openapi_route {
    const char *summary;     /* required: one line */
    const char *description; /* may be NULL; CommonMark */
    const char *tag;         /* NULL: the module's name */
    /* Parameters, ending with an entry whose name is NULL; NULL for none.
     * A path parameter left out is documented as a plain string. */
    const struct openapi_param *params;
    const char *request;  /* JSON Schema text of an application/json body; NULL: none */
    int request_optional; /* the body may be left out */
    /* Answers, ending with an entry whose status is 0; at least one. */
    const struct openapi_response *responses;
};

/* Entries of the lists above, by their designated fields:
 *   .params = (const struct openapi_param[]){
 *       OPENAPI_PATH("id", "The user's id.", OPENAPI_UUID), OPENAPI_END_PARAMS},
 *   .responses = (const struct openapi_response[]){
 *       OPENAPI_ANSWER(200, "The user.", OPENAPI_REF("User")),
 *       OPENAPI_ERROR(404, "No such user."), OPENAPI_END},
 */
#define OPENAPI_PATH(name_, description_, schema_)                                                 \
    {                                                                                              \
        .name = (name_), .in = "path", .description = (description_), .schema = (schema_),         \
        .required = 1                                                                              \
    }
#define OPENAPI_QUERY(name_, description_, schema_)                                                \
    {                                                                                              \
        .name = (name_), .in = "query", .description = (description_), .schema = (schema_)         \
    }
#define OPENAPI_HEADER(name_, description_, schema_)                                               \
    {                                                                                              \
        .name = (name_), .in = "header", .description = (description_), .schema = (schema_)        \
    }
#define OPENAPI_END_PARAMS                                                                         \
    {                                                                                              \
        .name = NULL                                                                               \
    }
/* A JSON answer with its schema; an error answer (the error shape); an
 * answer of another media type (its schema a string). */
#define OPENAPI_ANSWER(status_, description_, schema_)                                             \
    {                                                                                              \
        .status = (status_), .description = (description_), .schema = (schema_)                    \
    }
#define OPENAPI_ERROR(status_, description_)                                                       \
    {                                                                                              \
        .status = (status_), .description = (description_)                                         \
    }
#define OPENAPI_MEDIA(status_, description_, type_)                                                \
    {                                                                                              \
        .status = (status_), .description = (description_), .schema = OPENAPI_STRING,              \
        .content_type = (type_)                                                                    \
    }
#define OPENAPI_END                                                                                \
    {                                                                                              \
        .status = 0                                                                                \
    }

/* A named schema of a module: #/components/schemas/<name>. */
struct openapi_schema {
    const char *name;   /* [A-Za-z0-9._-]+ */
    const char *schema; /* JSON Schema text */
};

/* What the document says of the service itself. */
struct openapi_info {
    const char *title;       /* the module's name */
    const char *version;     /* the runtime's version (RIPPLE_VERSION) */
    const char *description; /* may be NULL */
    /* The module's schemas, ending with an entry whose name is NULL; NULL
     * for none. */
    const struct openapi_schema *schemas;
};

/* Builds the OpenAPI 3.1 document of every route of r (in the order they
 * were added), with the bearer (JWT) security scheme on every route that is
 * not HTTP_ROUTE_PUBLIC. Returns 0 and sets *out (new: json_decref it), or
 * -EINVAL with a one-line reason naming the route in err (a bad fragment),
 * or -ENOMEM. */
CORE_MUST_CHECK int openapi_build(const struct http_router *r, const struct openapi_info *info,
                                  struct json_t **out, char *err, size_t errlen);

/* The page and the renderer's files GET /api/docs serves (swagger-ui-dist,
 * embedded at build time: scripts/embed-assets). */
struct openapi_asset {
    const char *path; /* "swagger-ui-bundle.js" */
    const char *content_type;
    const unsigned char *data; /* followed by a NUL that len does not count */
    size_t len;
};
extern const struct openapi_asset openapi_assets[];
extern const size_t openapi_assets_count;

/* The embedded file named path, or NULL. */
const struct openapi_asset *openapi_asset_find(const char *path);

#endif
